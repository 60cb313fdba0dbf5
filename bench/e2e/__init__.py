"""End-to-end benchmark (issue 17): open-loop creates at a list of rates against a stack it
starts itself (simulator, gateway, PostgreSQL or SQLite, file store), beside a bare pipeline
doing only the unavoidable work per task.

`python -m bench.e2e` (see cli.py for the flags) prints a markdown table: per rate, the latency
from provider completion (the simulator's `final_at`) to `succeeded` (the row's `completed_at`),
the drain time, CPU per task of the service process(es) and of the machine, and whether the rate
was held (every task succeeded, p99 < 1 s). docs/benchmarks.md, "End to end (issue 17)"."""
