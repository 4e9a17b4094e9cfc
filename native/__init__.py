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
For the tests and the benchmark:
    harness.py       the processes under mirakuru, on free ports
    make_run.py      `make run` driven as a user drives it
    otlp_receiver.py a trace receiver standing in for a collector
"""
