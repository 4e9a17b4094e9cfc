"""The native stack: the same processes and config files as docker compose, without Docker.

What the stack is:
    settings.py      StackConfig: every setting the runner reads from the environment
                     (the only place it does), with ports and addresses
    processes.py     the processes to start, in order: command lines and environments
    configs.py       nginx, Prometheus, Alertmanager and blackbox configs, rendered from
                     the shared files compose uses
    redis_files.py   Redis's instance configs, data folders and password
    edge_cache.py    nginx's message cache folder, in shared memory
How it runs:
    run.py           `make run`, `make status`, `make stop`, `make restart`
    supervise.py     each process as an s6 service (make run's supervision)
    finish.py        what the supervisor does when a process ends
    console.py       make run's console lines
    reload.py        `make reload`
    backup.py        `make backup`, `make restore`, `make migrate`
    ports.py         free ports, and whether one is free
The tests' and the benchmark's harness is in tests/ (harness.py, make_run.py, otlp_receiver.py).
"""
