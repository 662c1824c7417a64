"""Inference: cached decoding, a paged KV cache with block tables, continuous batching.

    python -m inference.generate --workdir runs/lm_tiny --prompt "The "

decode.py        prefill + one-token steps at fixed shapes (contiguous KVCache)
sampling.py      greedy / temperature / top-k / top-p token choice
paged_cache.py   block allocator (host) + PagedKVCache (device pools and block tables)
paged_attention.py  decode attention through block tables: gather reference, blocked online softmax
scheduler.py     continuous batching engine over the paged cache
memory_sim.py    KV memory allocation simulator (contiguous vs paged) for the fragmentation study
generate.py      command line: sample from a trained checkpoint
"""

