"""Fairness benchmark: does one caller's backlog of slow notifications delay another caller?

`python -m bench.fairness` (see cli.py for the flags): for BEFORE (a checkout of main before
fair claiming, made with `git worktree`) and AFTER (this checkout), caller B's 20 tasks are run
on an idle service, then again right after caller A submitted a backlog whose `notify_url`
holds every request until the gateway's notify timeout. Reported: B's latency from provider
completion (the simulator's `final_at`) to `succeeded` (the task's `completed_at`), and how A's
backlog ended (every task terminal; every notification delivered or given up)."""
