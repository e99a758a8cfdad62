"""The llmos worker: loads a `transformers` causal LM, runs requests
concurrently and streams their tokens to the broker (`llmos worker`).

Only `workers.main` is imported by the CLI; it must not import torch.
"""
