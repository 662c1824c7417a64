"""Paged KV cache: allocator invariants, gather reference, paged == contiguous decoding, bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.dense_xla import dense_attention_xla
from attention.kv_cache import KVCache
from nn.errors import InferenceError
from inference.paged_attention import gather_kv, paged_decode_attention_blocked, paged_decode_attention_ref
from inference.paged_cache import BlockAllocator, PagedKVCache, PoolExhausted
from inference.scheduler import Engine, Request
from conftest import contiguous_tokens, tiny_model


# --- allocator ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_allocator_never_hands_out_a_block_twice_and_frees_everything(seed):
    """Random arrivals, growth and finishes (a seeded property test): ownership stays a partition."""
    rng = np.random.default_rng(seed)
    bs = int(rng.choice([8, 16, 32, 64]))
    alloc = BlockAllocator.for_pool(bs * int(rng.integers(4, 40)), bs)
    lengths: dict[int, int] = {}
    next_id = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.3:  # arrival with a prompt
            n = int(rng.integers(1, 3 * bs))
            try:
                alloc.ensure(next_id, n)
                lengths[next_id] = n
            except PoolExhausted:
                assert alloc.blocks_needed(next_id, n) > alloc.num_free and next_id not in alloc.sequences()
            next_id += 1
        elif op < 0.8 and lengths:  # a running sequence grows by a few tokens
            sid = int(rng.choice(list(lengths)))
            before = alloc.table(sid)
            try:
                alloc.ensure(sid, lengths[sid] + int(rng.integers(1, bs + 2)))
                lengths[sid] = max(lengths[sid], len(alloc.table(sid)) * bs - bs + 1)
            except PoolExhausted:
                assert alloc.table(sid) == before  # all or nothing
        elif lengths:  # a sequence finishes, in random order
            sid = int(rng.choice(list(lengths)))
            held = len(alloc.table(sid))
            assert alloc.free(sid) == held and alloc.table(sid) == []
            del lengths[sid]
        owned = [b for sid in alloc.sequences() for b in alloc.table(sid)]
        assert len(owned) == len(set(owned)), "a block is owned twice"
        assert set(owned).isdisjoint(alloc._free), "a block is both owned and free"
        assert len(owned) + alloc.num_free == alloc.num_blocks
        assert all(0 <= b < alloc.num_blocks for b in owned)
        for sid, n in lengths.items():
            assert len(alloc.table(sid)) * bs >= n
    for sid in list(lengths):
        alloc.free(sid)
    assert alloc.num_free == alloc.num_blocks and not alloc.sequences()
    assert sorted(alloc._free) == list(range(alloc.num_blocks))


def test_table_array_points_unused_entries_at_the_spare_block():
    alloc = BlockAllocator(6, 8)
    alloc.ensure("a", 17)  # 3 blocks
    t = alloc.table_array(["a", None], 4)
    np.testing.assert_array_equal(t, [[0, 1, 2, 6], [6, 6, 6, 6]])


# --- device side ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("impl", ["gather", "blocked16", "blocked128"])
@pytest.mark.parametrize("N, K, dtype, tol", [(4, 4, jnp.float32, 1e-5), (8, 2, jnp.float32, 1e-5), (8, 2, jnp.bfloat16, 2e-2)])
def test_paged_decode_attention_matches_dense_attention(N, K, dtype, tol, impl):
    rng = np.random.default_rng(0)
    B, H, bs, L, nb = 3, 16, 8, 5, 20
    k_pool = jnp.asarray(rng.normal(size=(nb + 1, bs, K, H)), dtype)
    v_pool = jnp.asarray(rng.normal(size=(nb + 1, bs, K, H)), dtype)
    tables = jnp.asarray(rng.permutation(nb)[: B * L].reshape(B, L), jnp.int32)
    lengths = jnp.array([1, 17, 33], jnp.int32)  # the blocked loop stops after the chunk holding 33
    q = jnp.asarray(rng.normal(size=(B, N, H)), dtype)
    fn = paged_decode_attention_ref if impl == "gather" else functools.partial(
        paged_decode_attention_blocked, chunk_tokens=int(impl[len("blocked"):]))  # 16: 2 blocks a chunk, L=5 padded
    out = jax.jit(fn)(q, k_pool, v_pool, tables, lengths)
    k, v = gather_kv(k_pool, v_pool, tables)
    want = dense_attention_xla(q[:, None], k, v, kv_lengths_B=lengths)[:, 0]
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), atol=tol, rtol=tol)
    # The gather itself: row b's position p is pool[table[b, p // bs], p % bs].
    np.testing.assert_array_equal(k[1, 13], k_pool[tables[1, 1], 5])


@pytest.mark.slow
def test_paged_cache_writes_like_the_contiguous_cache():
    rng = np.random.default_rng(1)
    B, K, H, bs = 2, 2, 4, 4
    alloc = BlockAllocator(8, bs)
    alloc.ensure(0, 9)
    alloc.ensure(1, 6)
    k_pool, v_pool = PagedKVCache.init_pool(8, bs, K, H)
    paged = PagedKVCache(k_pool, v_pool, jnp.asarray(alloc.table_array([0, 1], 3)), jnp.zeros((B,), jnp.int32))
    flat = KVCache.init(B, 12, K, H)
    for T in (5, 1, 1, 1):
        k, v = (jnp.asarray(rng.normal(size=(B, T, K, H)), jnp.float32) for _ in range(2))
        paged, flat = paged.write(k, v), flat.write(k, v)
        if T == 5:  # row 1's prompt is 3 tokens: reset lengths as after a padded prefill
            paged, flat = paged.with_lengths(jnp.array([5, 3])), flat.with_lengths(jnp.array([5, 3]))
    kg, vg = gather_kv(paged.k_pool_PbKH, paged.v_pool_PbKH, paged.block_tables_BL)
    for b, n in enumerate([8, 6]):
        np.testing.assert_array_equal(paged.lengths_B, flat.lengths_B)
        np.testing.assert_array_equal(kg[b, :n], flat.k_BSKH[b, :n])
        np.testing.assert_array_equal(vg[b, :n], flat.v_BSKH[b, :n])


@pytest.mark.parametrize("block_size, num_blocks, max_batch", [
    pytest.param(8, 64, 4, marks=pytest.mark.slow),  # roomy pool: sequences come and go through 4 slots
    pytest.param(16, 6, 3, marks=pytest.mark.slow),  # tight pool: decoding runs out of blocks and preempts
])
def test_paged_continuous_batching_gives_the_contiguous_tokens(block_size, num_blocks, max_batch):
    model = tiny_model()
    rng = np.random.default_rng(2)
    lengths = [3, 29, 8, 17, 1, 12, 40, 5]
    prompts = [[int(t) for t in rng.integers(0, 64, n)] for n in lengths]
    max_new, context = 20, 64
    want = contiguous_tokens(model, prompts, max_new, context)
    engine = Engine(model, num_blocks=num_blocks, block_size=block_size, max_batch=max_batch, context=context)
    reqs = [Request(i, p, max_new) for i, p in enumerate(prompts)]
    got = engine.run(reqs[:5], arrivals={3: reqs[5:7], 9: reqs[7:]})  # late arrivals join a running batch
    assert [got[i] for i in range(len(prompts))] == want
    assert engine.allocator.num_free == num_blocks and not engine.allocator.sequences()
    assert engine.stats["finished"] == len(prompts)
    assert engine.stats["max_running"] == max_batch
    if num_blocks == 6:
        assert engine.stats["preemptions"] > 0


@pytest.mark.slow
def test_engine_stop_tokens_and_context_limit():
    model = tiny_model()
    prompts = [[1, 2, 3], [7] * 30]
    free = contiguous_tokens(model, prompts, 12, 64)
    stop = free[0][4]
    engine = Engine(model, num_blocks=16, block_size=8, max_batch=2, context=36)
    got = engine.run([Request("a", prompts[0], 12, (stop,)), Request("b", prompts[1], 12)])
    assert got["a"] == free[0][: free[0].index(stop) + 1]
    assert got["b"] == free[1][:6]  # 30 + 6 = 36 = context


# --- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: BlockAllocator.for_pool(96, 12), "block_size=12 must be a positive power of two"),
    (lambda: BlockAllocator.for_pool(100, 16), "block_size=16 does not divide the pool of 100 tokens"),
    (lambda: BlockAllocator(0, 16), "num_blocks=0"),
    (lambda: Engine(tiny_model(), num_blocks=4, block_size=8, max_batch=2, context=64).submit(Request("x", [1] * 70, 4)),
     "request 'x': prompt of 70 tokens does not fit the model context of 64 tokens"),
    (lambda: Engine(tiny_model(), num_blocks=4, block_size=8, max_batch=2, context=64).submit(Request("x", [1] * 30, 10)),
     r"the pool of 4 blocks x 8 tokens is smaller than request 'x' needs \(39 tokens = 5 blocks\)"),
    (lambda: Engine(tiny_model(attention="performer"), num_blocks=4, block_size=8, max_batch=2, context=64),
     "the paged KV cache needs dense attention layers"),
])
def test_bad_input_is_a_one_line_error(make, match):
    with pytest.raises(InferenceError, match=match) as e:
        make()
    assert "\n" not in str(e.value)
