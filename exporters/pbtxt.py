"""config.pbtxt written from the tensor contracts, so names and shapes cannot drift."""

from __future__ import annotations

import json

from genrec.contracts import ModelContract

# concrete sizes used for warmup requests (a -1 dim needs a value)
WARMUP_DIM = 2
CAPS_PARAMETER = "genrec_input_caps"  # JSON {input: {axis: cap}}, read by ensemble/backends/onnxruntime


def _tensor(t) -> str:
    dims = ", ".join(str(d) for d in t.triton_dims)
    optional = "\n    optional: true" if t.optional else ""
    return f'  {{\n    name: "{t.name}"\n    data_type: TYPE_{t.dtype}\n    dims: [ {dims} ]{optional}\n  }}'


def _warmup(c: ModelContract) -> str:
    """A warmup request per model, so a version is not READY before it has run once."""
    inputs = []
    for t in c.inputs:
        dims = ", ".join(str(WARMUP_DIM if d == -1 else d) for d in t.triton_dims)
        # ids, steps, times and key weights must be valid: zeros; fp32 activations may be random.
        # (A warmup that fails makes the pip runtime's server crash, so keep it valid.)
        data = "random_data: true" if t.dtype == "FP32" and t.name != "ctx_w" else "zero_data: true"
        inputs.append(
            f'    inputs {{\n      key: "{t.name}"\n      value {{\n        data_type: TYPE_{t.dtype}\n        dims: [ {dims} ]\n        {data}\n      }}\n    }}'
        )
    batch = c.preferred_batch_sizes[0] if (c.max_batch_size and c.preferred_batch_sizes) else 1
    return f'model_warmup [\n  {{\n    name: "warmup"\n    batch_size: {batch}\n' + "\n".join(inputs) + "\n  }\n]"


def _ensemble_scheduling(c: ModelContract) -> str:
    steps = []
    for st in c.steps:
        maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in st.inputs.items()]
        maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in st.outputs.items()]
        steps.append(f'    {{\n      model_name: "{st.model}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }")
    return "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}"


def render(c: ModelContract, platform: str = "onnxruntime_onnx") -> str:
    lines = [
        f"# Generated from genrec.contracts ({c.name}) by genrec.exporters.pbtxt: do not edit by hand.",
        f"# {c.doc}",
    ]
    for dim, cap in c.caps.items():
        lines.append(f"# cap: {dim} <= {cap}")
    for t in (*c.inputs, *c.outputs):
        if t.doc:
            lines.append(f"# {t.name}: {t.doc}")
    for name, doc in c.parameters.items():
        lines.append(f"# request parameter {name}: {doc}")
    if c.steps:  # an ensemble: the composing models carry the instances, batching, caps and warmup
        platform = "ensemble"
    lines += [
        f'name: "{c.name}"',
        f'backend: "{c.backend}"' if c.backend else f'platform: "{platform}"',
        f"max_batch_size: {c.max_batch_size}",
        "input [\n" + ",\n".join(_tensor(t) for t in c.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t) for t in c.outputs) + "\n]",
        # the newest versions_kept versions are loaded, so the previous one still answers a
        # request that names it while the new one takes the unversioned traffic
        f"version_policy: {{ latest: {{ num_versions: {c.versions_kept} }} }}",
    ]
    if c.steps:
        return "\n".join([*lines, _ensemble_scheduling(c)]) + "\n"
    lines.append(f"instance_group [ {{ count: {c.instances}, kind: KIND_CPU }} ]")
    if c.max_batch_size or c.max_queue_size:
        batching = []
        if c.max_batch_size:
            sizes = ", ".join(str(s) for s in c.preferred_batch_sizes)
            batching += [f"  preferred_batch_size: [ {sizes} ]", f"  max_queue_delay_microseconds: {c.max_queue_delay_us}"]
        if c.max_queue_size:  # accepted with max_batch_size 0 too (Triton 2.51, Python backend): one request per execute
            batching.append(
                f"  default_queue_policy {{ timeout_action: REJECT, default_timeout_microseconds: {c.queue_timeout_us},"
                f" allow_timeout_override: true, max_queue_size: {c.max_queue_size} }}"
            )
        lines.append("dynamic_batching {\n" + "\n".join(batching) + "\n}")
    if c.caps and not c.backend:  # enforced by the pip runtime's onnxruntime backend on direct calls
        lines.append(f'parameters {{\n  key: "{CAPS_PARAMETER}"\n  value: {{ string_value: {json.dumps(c.caps_parameter())} }}\n}}')
    if not c.backend:  # a Python model that calls others must not warm up before they load
        lines.append(_warmup(c))
    return "\n".join(lines) + "\n"
