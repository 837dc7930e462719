"""A user's cached UGT encoder state and its incremental update, in numpy.

The encoder graph itself (one block of new tokens against explicit cached K/V) is a callable:
the PyTorch ``UGTEncoder.block_forward`` in the reference pipeline, the exported ONNX graph (in
process or through Triton BLS) on the serving path. Everything around it lives here, once:
which cached keys a block sees, how old blocks are compressed, what the decoder's memory is.

History compression (see ``genrec.models.ugt_encoder`` for the attention maths): a query in
block ``b = pos // C`` sees exact keys of blocks ``b-Rb .. b``, one mean slot per block in
``b-Rb-M .. b-Rb-1`` and one running-mean summary of all older blocks. The state therefore
holds at most about ``recent_tokens + block_tokens`` exact keys, ``slots`` slots and one summary
per layer, whatever the history length; a returning user with k new events costs O(k) blocks.

Several blocks per graph call (``blocks_per_call``, the cold-start lever): a call may span up to
``Rb + 1`` consecutive blocks, because then every new token of the span is still in the exact
window of every later query of the span. The call's context is the union of its blocks' views
(``merged_context``) and ``ctx_w`` has one row per new token that weights only its own block's
view (zeros elsewhere), so each query sees exactly the keys and weights it sees one block at a
time: the same outputs (to float rounding) with up to ``Rb + 1`` times fewer calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from genrec.data.schema import History

USER, ITEM, ACTION, CONTEXT = 0, 1, 2, 3  # token types, as the encoder embeds them
UNCOMPRESSED_CHUNK = 256  # tokens per graph call when compression is off

# feeds (the encoder contract's inputs; ctx_w is (tokens, context): each new token's key weights) -> (new_k (L,G,d), new_v (L,G,d), out (G,d), user (G,d))
BlockFn = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    d_model: int
    block_tokens: int  # C
    recent_blocks: int  # Rb = recent_tokens // C
    slots: int  # M
    compression: bool

    @classmethod
    def of(cls, enc_cfg, compression: bool | None = None) -> Geometry:
        c = enc_cfg.block_tokens
        return cls(
            enc_cfg.n_layers,
            enc_cfg.d_model,
            c,
            max(0, enc_cfg.recent_tokens // c),
            enc_cfg.slots,
            enc_cfg.compression if compression is None else compression,
        )


def event_tokens(h: History, first_position: int) -> dict[str, np.ndarray]:
    """The ITEM/ACTION token pair of each event (no USER / CTX)."""
    n = 2 * len(h)
    types = np.empty(n, dtype=np.int64)
    types[0::2], types[1::2] = ITEM, ACTION
    item = np.full(n, -1, dtype=np.int64)
    item[0::2] = h.item
    action = np.zeros(n, dtype=np.int64)
    action[1::2] = h.action
    device = np.zeros(n, dtype=np.int64)
    device[1::2] = h.device
    return {
        "item": item,
        "action": action,
        "device": device,
        "types": types,
        "time": np.repeat(np.asarray(h.timestamp, dtype=np.float64), 2),
        "pos": np.arange(first_position, first_position + n, dtype=np.int64),
    }


def _f32(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def _f64(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=np.float64)


@dataclass
class EncoderState:
    """A user's state after ``n_tokens`` tokens (USER + 2 per event): exact keys, slots, summary."""

    n_tokens: int
    block: int  # block of the next token
    ex_k: np.ndarray  # (L, n_ex, d) exact keys
    ex_v: np.ndarray
    ex_out: np.ndarray  # (n_ex, d) final outputs (decoder memory)
    ex_pos: np.ndarray  # (n_ex,) float64
    ex_time: np.ndarray  # (n_ex,) float64
    sl_k: np.ndarray  # (L, n_sl, d) block means
    sl_v: np.ndarray
    sl_out: np.ndarray
    sl_pos: np.ndarray
    sl_time: np.ndarray
    su_k: np.ndarray  # (L, d) sums of the block means folded into the summary
    su_v: np.ndarray
    su_out: np.ndarray  # (d,)
    su_pos: float = 0.0
    su_time: float = 0.0
    su_count: int = 0  # blocks folded into the summary

    @classmethod
    def empty(cls, g: Geometry) -> EncoderState:
        L, d = g.n_layers, g.d_model
        return cls(
            0,
            0,
            _f32(L, 0, d),
            _f32(L, 0, d),
            _f32(0, d),
            _f64(),
            _f64(),
            _f32(L, 0, d),
            _f32(L, 0, d),
            _f32(0, d),
            _f64(),
            _f64(),
            _f32(L, d),
            _f32(L, d),
            _f32(d),
        )

    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "ex_k",
        "ex_v",
        "ex_out",
        "ex_pos",
        "ex_time",
        "sl_k",
        "sl_v",
        "sl_out",
        "sl_pos",
        "sl_time",
        "su_k",
        "su_v",
        "su_out",
    )

    def to_bytes(self) -> bytes:
        """Serialised for an out-of-process store (Redis): the arrays' raw bytes behind a JSON header."""
        arrays = [np.ascontiguousarray(getattr(self, n)) for n in self._ARRAYS]
        header = {
            "scalars": [int(self.n_tokens), int(self.block), float(self.su_pos), float(self.su_time), int(self.su_count)],
            "arrays": [[a.dtype.str, list(a.shape)] for a in arrays],
        }
        h = json.dumps(header).encode()
        return b"".join([len(h).to_bytes(4, "little"), h, *(a.tobytes() for a in arrays)])

    @classmethod
    def from_bytes(cls, data: bytes) -> EncoderState:
        n = int.from_bytes(data[:4], "little")
        header = json.loads(data[4 : 4 + n])
        offset, values = 4 + n, {}
        for name, (dtype, shape) in zip(cls._ARRAYS, header["arrays"]):
            dt = np.dtype(dtype)
            size = dt.itemsize * int(np.prod(shape))
            values[name] = np.frombuffer(data, dt, count=size // dt.itemsize, offset=offset).reshape(shape).copy()
            offset += size
        n_tokens, block, su_pos, su_time, su_count = header["scalars"]
        return cls(n_tokens, block, **values, su_pos=su_pos, su_time=su_time, su_count=su_count)

    def nbytes(self) -> int:
        return int(sum(getattr(self, n).nbytes for n in self._ARRAYS))


@dataclass(frozen=True)
class EncodedRequest:
    memory: np.ndarray  # (M, d) what the decoder cross-attends to
    memory_logw: np.ndarray  # (M,) log of the tokens each entry stands for
    user: np.ndarray  # (d,) user vector (ANN query)


def span_blocks(g: Geometry, blocks_per_call: int) -> int:
    """Blocks one graph call may span: at most ``Rb + 1`` keeps the span's tokens exact for each
    other (see the module doc); ``blocks_per_call`` 0 means that most. Without compression there
    are no blocks to span (calls are ``UNCOMPRESSED_CHUNK`` tokens)."""
    if blocks_per_call < 0:
        raise ValueError(f"blocks_per_call={blocks_per_call}: 0 (the most that stay exact) or more")
    most = g.recent_blocks + 1
    return most if blocks_per_call == 0 else min(blocks_per_call, most)


def _mean(a: np.ndarray, axis: int) -> np.ndarray:
    """``a.mean(axis, keepdims=True)``, the same sum and division without its Python wrapper."""
    return np.add.reduce(a, axis=axis, keepdims=True) / a.shape[axis]


def _drop(a: np.ndarray, lo: int, hi: int, axis: int) -> np.ndarray:
    """``a`` without the entries ``lo:hi`` along ``axis`` (a view when they are the oldest)."""
    head = a[(slice(None),) * axis + (slice(0, lo),)]
    tail = a[(slice(None),) * axis + (slice(hi, None),)]
    return tail if lo == 0 else np.concatenate([head, tail], axis=axis)


@dataclass(frozen=True)
class _View:
    """One query block's context (``IncrementalEncoder.context``: with compression its keys are
    the summary, ``slots`` slots, then the exact keys) and how many new tokens use it."""

    ctx: dict[str, np.ndarray]
    queries: int
    folded: int = 0  # blocks in its summary: views with the same count share the summary key
    slots: int = 0


_KEYS = ("ctx_k", "ctx_v", "ctx_pos", "ctx_time")  # per-key inputs; ctx_k/ctx_v have keys on axis 1


def _keys(ctx: dict[str, np.ndarray], name: str, lo: int, hi: int | None = None) -> np.ndarray:
    a = ctx[name]
    return a[:, lo:hi] if a.ndim == 3 else a[lo:hi]


def merged_context(views: list[_View]) -> dict[str, np.ndarray]:
    """One call's context for its query blocks' views: the union of their keys and ``ctx_w``
    (tokens, context) giving each query its own view's weights, 0 for keys it does not see.

    The union: one summary per distinct folded count, every slot once (slots are block means,
    identified by their mean position), and the first view's exact keys (a later view of the span
    only loses its oldest exact keys to slots). So the context grows by the few keys that change
    within the span, not by one whole view per block."""
    first = views[0]
    if len(views) == 1:
        w = first.ctx["ctx_w"]
        return {**first.ctx, "ctx_w": np.repeat(w[None], first.queries, axis=0)}
    summaries: dict[int, _View] = {}
    for v in views:
        summaries.setdefault(v.folded, v)  # views with the same folded count have the same summary
    su_col = {folded: i for i, folded in enumerate(summaries)}
    slot_pos, slot_first = np.unique(np.concatenate([_keys(v.ctx, "ctx_pos", 1, 1 + v.slots) for v in views]), return_index=True)
    ex_pos = _keys(first.ctx, "ctx_pos", 1 + first.slots)  # ascending: exact keys are kept in position order
    merged = {}
    for name in _KEYS:
        axis = 1 if name in ("ctx_k", "ctx_v") else 0
        slots = np.concatenate([_keys(v.ctx, name, 1, 1 + v.slots) for v in views], axis=axis)
        parts = [_keys(v.ctx, name, 0, 1) for v in summaries.values()]
        merged[name] = np.concatenate([*parts, np.take(slots, slot_first, axis=axis), _keys(first.ctx, name, 1 + first.slots)], axis=axis)
    n_su, n_sl = len(summaries), slot_pos.size
    w = np.zeros((sum(v.queries for v in views), n_su + n_sl + ex_pos.size), np.float32)
    row = 0
    for v in views:
        rows, cw, pos = slice(row, row + v.queries), v.ctx["ctx_w"], v.ctx["ctx_pos"]
        w[rows, su_col[v.folded]] = cw[0]
        w[rows, n_su + np.searchsorted(slot_pos, pos[1 : 1 + v.slots])] = cw[1 : 1 + v.slots]
        w[rows, n_su + n_sl + np.searchsorted(ex_pos, pos[1 + v.slots :])] = cw[1 + v.slots :]
        row += v.queries
    merged["ctx_w"] = w
    return merged


class IncrementalEncoder:
    """``blocks_per_call``: 1 = one graph call per block; n > 1 = up to n blocks per call (capped
    by ``span_blocks``); 0 = the most that stay exact. Same outputs either way."""

    def __init__(self, block: BlockFn, geometry: Geometry, blocks_per_call: int = 1) -> None:
        self.block = block
        self.g = geometry
        self.span = span_blocks(geometry, blocks_per_call) if geometry.compression else 1

    def init_state(self) -> EncoderState:
        return EncoderState.empty(self.g)

    def advance(self, s: EncoderState, block: int) -> None:
        """Move the state's view forward to queries in ``block``: exact -> slot -> summary."""
        c, rb, m = self.g.block_tokens, self.g.recent_blocks, self.g.slots
        while s.block < block:
            s.block += 1
            leaving = s.block - rb - 1  # block that drops out of the exact window
            if leaving >= 0:
                # exact keys are appended in position order, so the leaving block is one slice
                # (slices, not masks: this runs once per block of a cold history)
                lo, hi = np.searchsorted(s.ex_pos, [leaving * c, (leaving + 1) * c])
                s.sl_k = np.concatenate([s.sl_k, _mean(s.ex_k[:, lo:hi], axis=1)], axis=1)
                s.sl_v = np.concatenate([s.sl_v, _mean(s.ex_v[:, lo:hi], axis=1)], axis=1)
                s.sl_out = np.concatenate([s.sl_out, _mean(s.ex_out[lo:hi], axis=0)])
                s.sl_pos = np.concatenate([s.sl_pos, _mean(s.ex_pos[lo:hi], axis=0)])
                s.sl_time = np.concatenate([s.sl_time, _mean(s.ex_time[lo:hi], axis=0)])
                s.ex_k, s.ex_v = _drop(s.ex_k, lo, hi, axis=1), _drop(s.ex_v, lo, hi, axis=1)
                s.ex_out, s.ex_pos, s.ex_time = (_drop(a, lo, hi, axis=0) for a in (s.ex_out, s.ex_pos, s.ex_time))
            if s.block - rb - m - 1 >= 0 and s.sl_pos.size > 0:  # the oldest slot folds into the summary
                s.su_k = s.su_k + s.sl_k[:, 0]
                s.su_v = s.su_v + s.sl_v[:, 0]
                s.su_out = s.su_out + s.sl_out[0]
                s.su_pos += float(s.sl_pos[0])
                s.su_time += float(s.sl_time[0])
                s.su_count += 1
                s.sl_k, s.sl_v, s.sl_out = s.sl_k[:, 1:], s.sl_v[:, 1:], s.sl_out[1:]
                s.sl_pos, s.sl_time = s.sl_pos[1:], s.sl_time[1:]

    def context(self, s: EncoderState) -> dict[str, np.ndarray]:
        """The cached keys the current block sees, as the encoder graph's ``ctx_*`` inputs (with
        ``ctx_w`` per key: ``merged_context`` gives it one row per new token)."""
        if not self.g.compression:
            return {
                "ctx_k": s.ex_k,
                "ctx_v": s.ex_v,
                "ctx_w": np.ones(s.ex_pos.size, np.float32),
                "ctx_pos": s.ex_pos,
                "ctx_time": s.ex_time,
            }
        n = max(s.su_count, 1)
        c = float(self.g.block_tokens)
        return {
            "ctx_k": np.concatenate([s.su_k[:, None] / n, s.sl_k, s.ex_k], axis=1),
            "ctx_v": np.concatenate([s.su_v[:, None] / n, s.sl_v, s.ex_v], axis=1),
            "ctx_w": np.concatenate([[c * s.su_count], np.full(s.sl_pos.size, c), np.ones(s.ex_pos.size)]).astype(np.float32),
            "ctx_pos": np.concatenate([[s.su_pos / n], s.sl_pos, s.ex_pos]),
            "ctx_time": np.concatenate([[s.su_time / n], s.sl_time, s.ex_time]),
        }

    def _run(
        self, s: EncoderState, tok: dict[str, np.ndarray], segment: int, cache: bool, views: list[_View] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One graph call for ``tok``; ``views``: the context of each query block (default: the
        state's current view for every token)."""
        views = views or [_View(self.context(s), tok["pos"].size)]
        feeds = {**tok, "segment": np.array([segment], np.int64), **merged_context(views)}
        new_k, new_v, out, user = self.block(feeds)
        if cache:
            s.ex_k = np.concatenate([s.ex_k, new_k], axis=1)
            s.ex_v = np.concatenate([s.ex_v, new_v], axis=1)
            s.ex_out = np.concatenate([s.ex_out, out])
            s.ex_pos = np.concatenate([s.ex_pos, tok["pos"].astype(np.float64)])
            s.ex_time = np.concatenate([s.ex_time, tok["time"]])
        return out, user

    def extend(self, s: EncoderState, new_events: History, segment: int) -> EncoderState:
        """Append events to the state in place: one graph call per ``span`` blocks touched, O(k) for k events."""
        if len(new_events):
            self._extend_tokens(s, new_events, segment, float(new_events.timestamp[0]))
        return s

    def _extend_tokens(self, s: EncoderState, events: History, segment: int, user_time: float) -> None:
        ev = event_tokens(events, s.n_tokens)
        if s.n_tokens == 0:  # the USER token opens every history
            ev = event_tokens(events, 1)
            for key, val in (("item", -1), ("action", 0), ("device", 0), ("types", USER), ("time", user_time), ("pos", 0)):
                ev[key] = np.concatenate([[val], ev[key]]).astype(ev[key].dtype)
        c = self.g.block_tokens
        start, total = 0, ev["pos"].size
        while start < total:
            views = None
            if self.g.compression:  # whole blocks per call: each block's queries share one compressed view
                views, end = [], start
                for _ in range(self.span):
                    if end == total:
                        break
                    p0 = int(ev["pos"][end])
                    # the state's old keys move to this block's view; the span's new keys stay
                    # exact for every query of the span, so they are appended after the call
                    self.advance(s, p0 // c)
                    n = min(total - end, (p0 // c + 1) * c - p0)
                    views.append(_View(self.context(s), n, s.su_count, s.sl_pos.size))
                    end += n
            else:  # exact attention is causal: chunks only bound the graph's (G x context) matrices
                end = min(total, start + UNCOMPRESSED_CHUNK)
            self._run(s, {k: v[start:end] for k, v in ev.items()}, segment, cache=True, views=views)
            start = end
        s.n_tokens += total
        if self.g.compression:
            self.advance(s, s.n_tokens // c)

    def query(self, s: EncoderState, ctx_device: int, ctx_time: int, segment: int) -> EncodedRequest:
        """Run the request's CTX token against the state: the decoder memory and the user vector.

        The state is not changed (CTX is per request). An empty state is the cold-start path:
        USER then CTX, computed on a scratch state.
        """
        if s.n_tokens == 0:
            s = self.init_state()
            self._extend_tokens(s, History.empty(), segment, float(ctx_time))
        tok = {
            "item": np.array([-1], np.int64),
            "action": np.array([0], np.int64),
            "device": np.array([ctx_device], np.int64),
            "types": np.array([CONTEXT], np.int64),
            "time": np.array([float(ctx_time)], np.float64),
            "pos": np.array([s.n_tokens], np.int64),
        }
        out, user = self._run(s, tok, segment, cache=False)
        if self.g.compression:
            c = float(self.g.block_tokens)
            mem = np.concatenate([s.su_out[None] / max(s.su_count, 1), s.sl_out, s.ex_out, out])
            w = np.concatenate([[c * s.su_count], np.full(s.sl_pos.size, c), np.ones(s.ex_pos.size + 1)])
        else:
            mem = np.concatenate([s.ex_out, out])
            w = np.ones(mem.shape[0])
        keep = w > 0
        return EncodedRequest(np.ascontiguousarray(mem[keep], np.float32), np.log(w[keep]).astype(np.float32), user[0])
