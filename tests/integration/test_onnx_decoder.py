"""Beam search over the exported ONNX decoder equals beam search over the PyTorch decoder."""

import numpy as np
import pytest

from genrec.data.split import leave_last_out
from genrec.ensemble.beam_search import beam_search, generated_items
from genrec.ensemble.onnx_decoder import DecoderGraphs, OnnxDecoderStep, OnnxUncachedStep
from genrec.evaluate import dataset_of
from genrec.exporters.onnx_export import export_decoder, session
from genrec.heldout import heldout_requests
from genrec.reference import ReferencePipeline, TorchCachedStep

pytestmark = pytest.mark.integration


def test_onnx_step_model_matches_the_torch_decoder(tiny_bundle, tmp_path):
    b = tiny_bundle
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[20:26], b.cfg.pipeline)
    pipe = ReferencePipeline(b)
    trie = pipe.catalogue.trie
    enc = pipe.encode(reqs)
    export_decoder(b, tmp_path / "cross.onnx", tmp_path / "step.onnx", [(enc.memory.numpy(), enc.memory_logw.numpy())])
    sessions = {"decoder_cross_kv": session(tmp_path / "cross.onnx"), "decoder_step": session(tmp_path / "step.onnx")}
    dc = b.cfg.decoder
    graphs = DecoderGraphs(
        lambda name, feeds: sessions[name].run(None, feeds),
        b.cfg.semantic_id.codebook_sizes,
        dc.n_layers,
        dc.n_heads,
        dc.d_model // dc.n_heads,
    )
    onnx_step = OnnxDecoderStep(graphs, enc.memory.numpy(), enc.memory_logw.numpy())
    widths = b.cfg.pipeline.beam_widths
    excluded = [None, reqs[1].history.item[-3:], None, None, None, None]
    got = generated_items(beam_search(onnx_step, trie, widths, len(reqs), excluded), trie, excluded)
    want = generated_items(
        beam_search(TorchCachedStep(b.decoder, enc.memory, enc.memory_logw), trie, widths, len(reqs), excluded), trie, excluded
    )
    for g, w in zip(got, want):
        assert np.array_equal(g.items, w.items)
        np.testing.assert_allclose(g.logprob, w.logprob, atol=1e-4)
    # without the KV cache (per-beam cross K/V, prefix recomputed): the same search
    uncached = OnnxUncachedStep(graphs, enc.memory.numpy(), enc.memory_logw.numpy())
    again = generated_items(beam_search(uncached, trie, widths, len(reqs), excluded), trie, excluded)
    for g, a in zip(got, again):
        assert np.array_equal(g.items, a.items)
        np.testing.assert_allclose(g.logprob, a.logprob, atol=1e-4)
