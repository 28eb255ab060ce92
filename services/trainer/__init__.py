"""TrainerService: persisted LoRA fine-tuning jobs (SFT, DPO, KTO) with streamed progress.

    service.py      transport-free logic: validation, the job queue and its worker (no torch import)
    store.py        the persisted job store (one atomic JSON file per job under --state-dir)
    jobs.py         plain-Python job model: spec, hyper-parameters with LEAP's defaults, records
    methods/        the table of training methods (SFT, DPO, KTO): one module each, read by every other part
    datasets.py     dataset files: reading, limits and the shared schema checks (no torch)
    checkpoints.py  versioned, crash-safe checkpoint directories with a manifest
    executor.py     runs one job: datasets -> training -> checkpoint
    training.py     the torch part: tokenisation with target-only loss, TRL trainers, progress callback
    server.py       thin gRPC servicer; client.py torch-free client; cli.py `leap trainer serve`
"""
