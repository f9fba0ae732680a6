"""Tests for naiad's protobuf definitions (naiad/protocol/*.proto).

Covers:
  (a) the generated modules import (together with tritonclient's);
  (b) real-world config.pbtxt texts parse with text_format;
  (c) wire compatibility with the official tritonclient in both directions;
  (d) a structural comparison of every message/enum/field/oneof/service in
      tritonclient's descriptors against ours (ours must be a superset);
  plus `scripts/gen_protos.py --check` and a small live gRPC round trip with
  the official client.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor

from naiad.protocol import _pool, health_pb2, health_pb2_grpc
from naiad.protocol import grpc_service_pb2 as ours_svc
from naiad.protocol import grpc_service_pb2_grpc as ours_svc_grpc
from naiad.protocol import model_config_pb2 as ours_mc

tc_svc = pytest.importorskip("tritonclient.grpc.service_pb2")
tc_mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")

ROOT = Path(__file__).resolve().parent.parent

# tritonclient release whose descriptors were compared field by field with
# Triton main (triton-inference-server/common protobuf/*.proto) when the
# .proto files were written. At that point they were identical.
REFERENCE_TRITONCLIENT = (2, 73, 0)

# Elements Triton main has that the reference tritonclient lacks, as
# {full name: reason}. Message/enum names, "Msg.field" or "Enum.VALUE".
# Empty: tritonclient 2.73.0 matches Triton main exactly.
TRITON_MAIN_ADDITIONS: dict[str, str] = {}

# Elements tritonclient has under another name than Triton main, as
# {tritonclient full name: (our full name, reason)}. Only same-number,
# same-type renames may go here. Empty: none with tritonclient 2.73.0.
# (ModelEnsembling field 2 was briefly spelled max_inflight_responses during
# development of Triton's ensemble backpressure; every release, tritonclient
# 2.73.0 included, uses max_inflight_requests, which is what naiad defines.)
RENAMED_IN_TRITONCLIENT: dict[str, tuple[str, str]] = {}


def _tritonclient_version() -> tuple[int, ...]:
    raw = importlib.metadata.version("tritonclient")
    parts = []
    for piece in raw.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# --------------------------------------------------------------------- (a)


def test_generated_modules_import():
    assert ours_mc.DESCRIPTOR.name == "naiad/protocol/model_config.proto"
    assert ours_svc.DESCRIPTOR.name == "naiad/protocol/grpc_service.proto"
    assert ours_svc.DESCRIPTOR.package == "inference"
    assert health_pb2.DESCRIPTOR.package == "grpc.health.v1"
    assert [d.name for d in ours_svc.DESCRIPTOR.dependencies] == [
        "naiad/protocol/model_config.proto"
    ]
    # ModelConfigResponse.config is *the* ModelConfig of model_config.proto.
    cfg_field = ours_svc.ModelConfigResponse.DESCRIPTOR.fields_by_name["config"]
    assert cfg_field.message_type is ours_mc.ModelConfig.DESCRIPTOR
    # gRPC stubs / servicers exist.
    for name in ("GRPCInferenceServiceStub", "GRPCInferenceServiceServicer",
                 "add_GRPCInferenceServiceServicer_to_server"):
        assert hasattr(ours_svc_grpc, name)
    for name in ("HealthStub", "HealthServicer", "add_HealthServicer_to_server"):
        assert hasattr(health_pb2_grpc, name)


def test_private_pool_coexists_with_tritonclient():
    # Both sets of modules are imported in this process; ours live in
    # naiad's private pool so the identical full names do not collide.
    assert ours_mc.DESCRIPTOR.pool is _pool.POOL
    assert ours_svc.DESCRIPTOR.pool is _pool.POOL
    assert health_pb2.DESCRIPTOR.pool is _pool.POOL
    assert tc_mc.DESCRIPTOR.pool is not _pool.POOL
    assert _pool.POOL.FindMessageTypeByName("inference.ModelConfig") is (
        ours_mc.ModelConfig.DESCRIPTOR
    )


# --------------------------------------------------------------------- (b)

CONFIG_DYNAMIC_BATCHING = """
name: "resnet50"
platform: "onnxruntime_onnx"
max_batch_size: 128
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "probs"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
    reshape: { shape: [ 1, 1000 ] }
  }
]
dynamic_batching {
  preferred_batch_size: [ 16, 32 ]
  max_queue_delay_microseconds: 200
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 100000
    allow_timeout_override: true
    max_queue_size: 64
  }
  priority_queue_policy {
    key: 1
    value: { timeout_action: REJECT, default_timeout_microseconds: 5000 }
  }
  priority_queue_policy [
    { key: 3 value { max_queue_size: 8 } }
  ]
}
version_policy: { latest: { num_versions: 2 } }
"""

CONFIG_SEQUENCE = """
name: "stateful_rnn"
backend: "python"
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest {
    max_candidate_sequences: 16
    preferred_batch_size: [ 2, 4 ]
    max_queue_delay_microseconds: 100
    preserve_ordering: false
  }
  control_input [
    {
      name: "START"
      control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ]
    },
    {
      name: "READY"
      control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ]
    },
    {
      name: "END"
      control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ]
    },
    {
      name: "CORRID"
      control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ]
    }
  ]
  state [
    {
      input_name: "INPUT_STATE"
      output_name: "OUTPUT_STATE"
      data_type: TYPE_FP32
      dims: [ 16 ]
      initial_state: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true name: "zeros" }
      use_same_buffer_for_input_output: true
      use_growable_memory: true
    },
    {
      input_name: "CACHE_IN"
      output_name: "CACHE_OUT"
      data_type: TYPE_INT32
      dims: [ -1 ]
      initial_state [
        { data_type: TYPE_INT32 dims: [ 4 ] data_file: "cache_init.bin" name: "from_file" }
      ]
    }
  ]
  iterative_sequence: false
}
version_policy: { all: {} }
"""

CONFIG_DIRECT_SEQUENCE = """
name: "direct_seq"
platform: "tensorrt_plan"
max_batch_size: 8
sequence_batching {
  direct { max_queue_delay_microseconds: 1000 minimum_slot_utilization: 0.5 }
}
"""

CONFIG_ENSEMBLE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 0
input [ { name: "RAW" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "LABELS" data_type: TYPE_STRING dims: [ -1 ] } ]
ensemble_scheduling {
  max_inflight_requests: 16
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map { key: "IMAGE_BYTES" value: "RAW" }
      output_map { key: "TENSOR" value: "preprocessed" }
    },
    {
      model_name: "classifier"
      model_version: 3
      input_map { key: "INPUT__0" value: "preprocessed" }
      output_map [
        { key: "OUTPUT__0" value: "LABELS" },
        { key: "OUTPUT__1" value: "unused" }
      ]
    }
  ]
}
version_policy: { specific: { versions: [ 1, 3 ] } }
"""

CONFIG_INSTANCES_AND_MISC = """
name: "llm"
backend: "python"
runtime: "model.py"
max_batch_size: 0
input [
  { name: "prompt" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true },
  { name: "shape_in" data_type: TYPE_INT64 dims: [ 2 ] is_shape_tensor: true },
  { name: "packed" data_type: TYPE_BF16 dims: [ 4 ] is_non_linear_format_io: true }
]
output [ { name: "text" data_type: TYPE_STRING dims: [ -1 ] is_shape_tensor: false } ]
batch_input [
  {
    kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO
    target_name: "offsets"
    data_type: TYPE_INT32
    source_input: "prompt"
  }
]
batch_output [
  { target_name: "text" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "prompt" }
]
instance_group [
  {
    name: "gpu_group"
    kind: KIND_GPU
    count: 2
    gpus: [ 0, 1 ]
    rate_limiter {
      resources [ { name: "R1" count: 4 }, { name: "shared_mem" global: true count: 1 } ]
      priority: 2
    }
    secondary_devices [ { kind: KIND_NVDLA device_id: 0 } ]
    profile: [ "0", "1" ]
    host_policy: "gpu_0"
  },
  { kind: KIND_CPU count: 1 passive: true },
  { kind: KIND_MODEL }
]
parameters: {
  key: "EXECUTION_ENV_PATH"
  value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" }
}
parameters [
  { key: "max_tokens_default" value: { string_value: "128" } },
  { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" } }
]
model_transaction_policy { decoupled: true }
response_cache { enable: true }
default_model_filename: "model.py"
cc_model_filenames { key: "8.0" value: "model_sm80.plan" }
metric_tags { key: "team" value: "search" }
model_operations { op_library_filename: [ "libcustomops.so" ] }
model_repository_agents {
  agents [ { name: "checksum" parameters { key: "MD5:1/model.py" value: "abc123" } } ]
}
model_metrics {
  metric_control [
    {
      metric_identifier { family: "nv_inference_first_response_histogram_ms" }
      histogram_options { buckets: [ 1, 5.5, 10, 100 ] }
    }
  ]
}
"""

DETECTOR_HEADER = """
name: "detector"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ 640, 640, 3 ] } ]
output [ { name: "boxes" data_type: TYPE_FP16 dims: [ -1, 6 ] } ]
"""

OPTIMIZATION_AND_WARMUP_BLOCKS = """
optimization {
  graph { level: 1 }
  priority: PRIORITY_MAX
  execution_accelerators {
    gpu_execution_accelerator : [
      {
        name : "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      }
    ]
    cpu_execution_accelerator : [ { name : "openvino" } ]
  }
  cuda {
    graphs: true
    busy_wait_events: true
    output_copy_stream: true
    graph_spec [
      {
        batch_size: 4
        input { key: "images" value: { dim: [ 640, 640, 3 ] } }
        graph_lower_bound {
          batch_size: 1
          input { key: "images" value: { dim: [ 320, 320, 3 ] } }
        }
      }
    ]
  }
  input_pinned_memory { enable: false }
  output_pinned_memory { enable: true }
  gather_kernel_buffer_threshold: 2
  eager_batching: true
}
model_warmup [
  {
    name: "zeros"
    batch_size: 8
    count: 3
    inputs { key: "images" value: { data_type: TYPE_UINT8 dims: [ 640, 640, 3 ] zero_data: true } }
  },
  {
    name: "random"
    batch_size: 1
    inputs {
      key: "images"
      value: { data_type: TYPE_UINT8 dims: [ 640, 640, 3 ] random_data: true }
    }
  },
  {
    name: "from_file"
    batch_size: 1
    inputs {
      key: "images"
      value: { data_type: TYPE_UINT8 dims: [ 640, 640, 3 ] input_data_file: "sample.raw" }
    }
  }
]
"""

CONFIG_OPTIMIZATION_AND_WARMUP = DETECTOR_HEADER + OPTIMIZATION_AND_WARMUP_BLOCKS

CONFIGS = {
    "dynamic_batching": CONFIG_DYNAMIC_BATCHING,
    "sequence": CONFIG_SEQUENCE,
    "direct_sequence": CONFIG_DIRECT_SEQUENCE,
    "ensemble": CONFIG_ENSEMBLE,
    "instances_and_misc": CONFIG_INSTANCES_AND_MISC,
    "optimization_and_warmup": CONFIG_OPTIMIZATION_AND_WARMUP,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_pbtxt_parses_like_tritonclient(name):
    text = CONFIGS[name]
    ours = text_format.Parse(text, ours_mc.ModelConfig())
    theirs = text_format.Parse(text, tc_mc.ModelConfig())
    # Same content: identical canonical text, and identical after a wire trip.
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)
    assert tc_mc.ModelConfig.FromString(ours.SerializeToString()) == theirs
    assert ours_mc.ModelConfig.FromString(theirs.SerializeToString()) == ours
    # JSON (what the HTTP endpoint returns) is identical too.
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(theirs)


def test_config_details():
    dyn = text_format.Parse(CONFIG_DYNAMIC_BATCHING, ours_mc.ModelConfig())
    assert dyn.WhichOneof("scheduling_choice") == "dynamic_batching"
    pqp = dyn.dynamic_batching.priority_queue_policy
    assert sorted(pqp) == [1, 3]
    assert pqp[1].timeout_action == ours_mc.ModelQueuePolicy.REJECT
    assert pqp[3].max_queue_size == 8
    default_policy = dyn.dynamic_batching.default_queue_policy
    assert default_policy.timeout_action == ours_mc.ModelQueuePolicy.DELAY
    assert dyn.version_policy.WhichOneof("policy_choice") == "latest"
    assert dyn.input[0].format == ours_mc.ModelInput.FORMAT_NCHW

    seq = text_format.Parse(CONFIG_SEQUENCE, ours_mc.ModelConfig())
    sb = seq.sequence_batching
    assert seq.WhichOneof("scheduling_choice") == "sequence_batching"
    assert sb.WhichOneof("strategy_choice") == "oldest"
    kinds = [ci.control[0].kind for ci in sb.control_input]
    assert kinds == [0, 1, 2, 3]
    assert list(sb.control_input[2].control[0].bool_false_true) == [False, True]
    assert sb.control_input[3].control[0].data_type == ours_mc.TYPE_UINT64
    assert sb.state[0].initial_state[0].WhichOneof("state_data") == "zero_data"
    assert sb.state[1].initial_state[0].WhichOneof("state_data") == "data_file"
    assert seq.version_policy.WhichOneof("policy_choice") == "all"

    direct = text_format.Parse(CONFIG_DIRECT_SEQUENCE, ours_mc.ModelConfig())
    assert direct.sequence_batching.WhichOneof("strategy_choice") == "direct"
    assert direct.sequence_batching.direct.minimum_slot_utilization == pytest.approx(0.5)

    ens = text_format.Parse(CONFIG_ENSEMBLE, ours_mc.ModelConfig())
    assert ens.WhichOneof("scheduling_choice") == "ensemble_scheduling"
    assert ens.ensemble_scheduling.max_inflight_requests == 16
    assert dict(ens.ensemble_scheduling.step[1].output_map) == {
        "OUTPUT__0": "LABELS", "OUTPUT__1": "unused"}
    assert list(ens.version_policy.specific.versions) == [1, 3]

    misc = text_format.Parse(CONFIG_INSTANCES_AND_MISC, ours_mc.ModelConfig())
    assert misc.WhichOneof("scheduling_choice") is None
    assert [g.kind for g in misc.instance_group] == [
        ours_mc.ModelInstanceGroup.KIND_GPU,
        ours_mc.ModelInstanceGroup.KIND_CPU,
        ours_mc.ModelInstanceGroup.KIND_MODEL,
    ]
    assert getattr(misc.instance_group[0].rate_limiter.resources[1], "global") is True
    assert misc.parameters["max_tokens_default"].string_value == "128"
    assert len(misc.parameters) == 3
    assert misc.model_transaction_policy.decoupled is True
    assert misc.response_cache.enable is True
    assert list(misc.model_metrics.metric_control[0].histogram_options.buckets) == [1, 5.5, 10, 100]

    opt = text_format.Parse(CONFIG_OPTIMIZATION_AND_WARMUP, ours_mc.ModelConfig())
    acc = opt.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    spec = opt.optimization.cuda.graph_spec[0]
    assert list(spec.input["images"].dim) == [640, 640, 3]
    assert list(spec.graph_lower_bound.input["images"].dim) == [320, 320, 3]
    choices = [w.inputs["images"].WhichOneof("input_data_type") for w in opt.model_warmup]
    assert choices == ["zero_data", "random_data", "input_data_file"]


def test_config_parse_is_strict():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x" no_such_field: 1', ours_mc.ModelConfig())
    # Two members of one oneof cannot both be given.
    with pytest.raises(text_format.ParseError):
        text_format.Parse(
            "dynamic_batching {} sequence_batching {}", ours_mc.ModelConfig())


# --------------------------------------------------------------------- (c)

# Every ModelConfig field except the scheduling oneof (covered separately).
RICH_CONFIG_TEXT = CONFIG_INSTANCES_AND_MISC + OPTIMIZATION_AND_WARMUP_BLOCKS + """
version_policy: { specific: { versions: [ 4 ] } }
"""


def _build_infer_request(mod):
    req = mod.ModelInferRequest(model_name="simple", model_version="2", id="req-1")
    req.parameters["sequence_id"].int64_param = 42
    req.parameters["sequence_start"].bool_param = True
    req.parameters["priority"].uint64_param = 2**63 + 5
    req.parameters["temperature"].double_param = 0.25
    req.parameters["note"].string_param = "héllo"
    inp = req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 4])
    inp.parameters["binary_data_size"].int64_param = 16
    inp2 = req.inputs.add(name="INPUT1", datatype="BYTES", shape=[2])
    inp2.contents.bytes_contents.extend([b"a\x00b", b""])
    inp3 = req.inputs.add(name="INPUT2", datatype="FP32", shape=[2])
    inp3.contents.fp32_contents.extend([1.5, -2.0])
    inp3.parameters["shared_memory_region"].string_param = "shm0"
    out = req.outputs.add(name="OUTPUT0")
    out.parameters["classification"].int64_param = 3
    req.raw_input_contents.append(bytes(range(16)))
    return req


def _build_infer_response(mod):
    resp = mod.ModelInferResponse(model_name="simple", model_version="2", id="req-1")
    resp.parameters["triton_final_response"].bool_param = True
    o = resp.outputs.add(name="OUTPUT0", datatype="FP64", shape=[3])
    o.parameters["binary_data_size"].int64_param = 24
    o2 = resp.outputs.add(name="OUTPUT1", datatype="UINT64", shape=[2])
    o2.contents.uint64_contents.extend([1, 2**64 - 1])
    o3 = resp.outputs.add(name="OUTPUT2", datatype="BOOL", shape=[1])
    o3.contents.bool_contents.append(True)
    resp.outputs.add(name="OUTPUT3", datatype="INT8", shape=[2]).contents.int_contents.extend(
        [-1, 7])
    resp.outputs.add(name="OUTPUT4", datatype="UINT8", shape=[1]).contents.uint_contents.append(
        255)
    resp.outputs.add(name="OUTPUT5", datatype="INT64", shape=[1]).contents.int64_contents.append(
        -(2**63))
    resp.outputs.add(name="OUTPUT6", datatype="FP64", shape=[1]).contents.fp64_contents.append(
        3.25)
    resp.raw_output_contents.append(b"\x00" * 24)
    return resp


def _build_stream_response(mod):
    msg = mod.ModelStreamInferResponse(error_message="")
    msg.infer_response.CopyFrom(_build_infer_response(mod))
    return msg


def _build_stream_error(mod):
    return mod.ModelStreamInferResponse(error_message="model 'x' is not ready")


def _build_config_response(mod):
    resp = mod.ModelConfigResponse()
    text_format.Parse(RICH_CONFIG_TEXT, resp.config)
    return resp


def _build_config_response_sequence(mod):
    resp = mod.ModelConfigResponse()
    text_format.Parse(CONFIG_SEQUENCE, resp.config)
    return resp


def _build_config_response_ensemble(mod):
    resp = mod.ModelConfigResponse()
    text_format.Parse(CONFIG_ENSEMBLE, resp.config)
    return resp


def _build_config_response_dynamic(mod):
    resp = mod.ModelConfigResponse()
    text_format.Parse(CONFIG_DYNAMIC_BATCHING, resp.config)
    return resp


def _build_statistics_response(mod):
    resp = mod.ModelStatisticsResponse()
    st = resp.model_stats.add(name="simple", version="1", last_inference=1700000000123,
                              inference_count=10, execution_count=4)
    for i, field in enumerate(("success", "fail", "queue", "compute_input", "compute_infer",
                               "compute_output", "cache_hit", "cache_miss")):
        d = getattr(st.inference_stats, field)
        d.count = i + 1
        d.ns = (i + 1) * 1000
    b = st.batch_stats.add(batch_size=4)
    b.compute_input.count = 1
    b.compute_infer.ns = 99
    b.compute_output.count = 1
    st.memory_usage.add(type="GPU", id=0, byte_size=1 << 30)
    st.memory_usage.add(type="CPU", id=-1, byte_size=1024)
    rs = st.response_stats["0"]
    rs.compute_infer.count = 1
    rs.compute_output.ns = 5
    rs.success.count = 1
    rs.fail.count = 0
    rs.empty_response.count = 2
    rs.cancel.count = 3
    st.response_stats["1"].success.count = 7
    resp.model_stats.add(name="other", version="3")
    return resp


def _build_repository_index(mod):
    resp = mod.RepositoryIndexResponse()
    resp.models.add(name="a", version="1", state="READY")
    resp.models.add(name="b", version="", state="UNAVAILABLE", reason="unloaded")
    return resp


def _build_repository_load(mod):
    req = mod.RepositoryModelLoadRequest(repository_name="", model_name="m")
    req.parameters["config"].string_param = '{"backend": "onnxruntime"}'
    req.parameters["file:1/model.onnx"].bytes_param = b"\x08\x07onnx"
    req.parameters["flag"].bool_param = False
    req.parameters["n"].int64_param = -3
    return req


def _build_repository_unload(mod):
    req = mod.RepositoryModelUnloadRequest(model_name="m")
    req.parameters["unload_dependents"].bool_param = True
    return req


def _build_trace_setting_request(mod):
    req = mod.TraceSettingRequest(model_name="simple")
    req.settings["trace_level"].value.extend(["TIMESTAMPS", "TENSORS"])
    req.settings["trace_rate"].value.append("100")
    req.settings["log_frequency"]  # present with an empty list: reset to default
    return req


def _build_trace_setting_response(mod):
    resp = mod.TraceSettingResponse()
    resp.settings["trace_file"].value.append("/tmp/trace.json")
    resp.settings["trace_mode"].value.append("triton")
    return resp


def _build_log_settings_request(mod):
    req = mod.LogSettingsRequest()
    req.settings["log_verbose_level"].uint32_param = 2
    req.settings["log_info"].bool_param = True
    req.settings["log_format"].string_param = "ISO8601"
    return req


def _build_log_settings_response(mod):
    resp = mod.LogSettingsResponse()
    resp.settings["log_file"].string_param = ""
    resp.settings["log_info"].bool_param = True
    resp.settings["log_warning"].bool_param = False
    resp.settings["log_verbose_level"].uint32_param = 0
    return resp


def _build_server_metadata(mod):
    return mod.ServerMetadataResponse(
        name="triton", version="2.55.0",
        extensions=["classification", "sequence", "model_repository", "schedule_policy",
                    "model_configuration", "system_shared_memory", "cuda_shared_memory",
                    "binary_tensor_data", "parameters", "statistics", "trace", "logging"])


def _build_model_metadata(mod):
    resp = mod.ModelMetadataResponse(name="simple", versions=["1", "2"], platform="python")
    resp.inputs.add(name="INPUT0", datatype="INT32", shape=[-1, 16])
    resp.outputs.add(name="OUTPUT0", datatype="BYTES", shape=[-1])
    return resp


def _build_shm_status(mod):
    resp = mod.SystemSharedMemoryStatusResponse()
    r = resp.regions["in"]
    r.name, r.key, r.offset, r.byte_size = "in", "/in_shm", 0, 64
    return resp


def _build_cuda_shm_register(mod):
    return mod.CudaSharedMemoryRegisterRequest(
        name="cuda0", raw_handle=bytes(range(64)), device_id=1, byte_size=4096)


def _build_cuda_shm_status(mod):
    resp = mod.CudaSharedMemoryStatusResponse()
    r = resp.regions["cuda0"]
    r.name, r.device_id, r.byte_size = "cuda0", 1, 4096
    return resp


def _build_system_shm_register(mod):
    return mod.SystemSharedMemoryRegisterRequest(name="in", key="/in_shm", offset=8,
                                                 byte_size=64)


def _build_simple_requests(mod):
    # Several tiny messages in one go; returned as a list.
    return [
        mod.ServerLiveResponse(live=True),
        mod.ServerReadyResponse(ready=True),
        mod.ModelReadyRequest(name="m", version="1"),
        mod.ModelReadyResponse(ready=True),
        mod.ModelMetadataRequest(name="m", version="1"),
        mod.ModelConfigRequest(name="m", version="1"),
        mod.ModelStatisticsRequest(name="m"),
        mod.RepositoryIndexRequest(repository_name="r", ready=True),
        mod.SystemSharedMemoryStatusRequest(name="in"),
        mod.SystemSharedMemoryUnregisterRequest(name="in"),
        mod.CudaSharedMemoryStatusRequest(name="c"),
        mod.CudaSharedMemoryUnregisterRequest(name="c"),
    ]


WIRE_CASES = {
    "ModelInferRequest": _build_infer_request,
    "ModelInferResponse": _build_infer_response,
    "ModelStreamInferResponse": _build_stream_response,
    "ModelStreamInferResponse.error": _build_stream_error,
    "ModelConfigResponse.rich": _build_config_response,
    "ModelConfigResponse.sequence": _build_config_response_sequence,
    "ModelConfigResponse.ensemble": _build_config_response_ensemble,
    "ModelConfigResponse.dynamic": _build_config_response_dynamic,
    "ModelStatisticsResponse": _build_statistics_response,
    "RepositoryIndexResponse": _build_repository_index,
    "RepositoryModelLoadRequest": _build_repository_load,
    "RepositoryModelUnloadRequest": _build_repository_unload,
    "TraceSettingRequest": _build_trace_setting_request,
    "TraceSettingResponse": _build_trace_setting_response,
    "LogSettingsRequest": _build_log_settings_request,
    "LogSettingsResponse": _build_log_settings_response,
    "ServerMetadataResponse": _build_server_metadata,
    "ModelMetadataResponse": _build_model_metadata,
    "SystemSharedMemoryStatusResponse": _build_shm_status,
    "SystemSharedMemoryRegisterRequest": _build_system_shm_register,
    "CudaSharedMemoryRegisterRequest": _build_cuda_shm_register,
    "CudaSharedMemoryStatusResponse": _build_cuda_shm_status,
}


def _as_list(x):
    return x if isinstance(x, list) else [x]


def _assert_same_content(a, b):
    """a and b are messages of the same full name from different modules."""
    assert a.DESCRIPTOR.full_name == b.DESCRIPTOR.full_name
    assert text_format.MessageToString(a) == text_format.MessageToString(b)
    assert json_format.MessageToDict(a) == json_format.MessageToDict(b)


@pytest.mark.parametrize("case", sorted(WIRE_CASES) + ["simple"])
@pytest.mark.parametrize("direction", ["tritonclient_to_naiad", "naiad_to_tritonclient"])
def test_wire_compatibility(case, direction):
    build = _build_simple_requests if case == "simple" else WIRE_CASES[case]
    if direction == "tritonclient_to_naiad":
        src_mod, dst_mod = tc_svc, ours_svc
    else:
        src_mod, dst_mod = ours_svc, tc_svc
    for src in _as_list(build(src_mod)):
        data = src.SerializeToString()
        dst_cls = getattr(dst_mod, src.DESCRIPTOR.name)
        dst = dst_cls.FromString(data)
        # Identical content. Text format omits unknown fields, so a field the
        # receiving side did not know would show up as a difference here.
        _assert_same_content(src, dst)
        # ...and equal to what the receiving side builds itself.
        expected = _as_list(build(dst_mod))
        assert dst in expected
        # Round trip back is lossless.
        assert type(src).FromString(dst.SerializeToString()) == src


def test_wire_request_built_by_official_client_helpers():
    """A request assembled by tritonclient's own InferInput/_utils code."""
    np = pytest.importorskip("numpy")
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import _utils as tc_utils

    a = grpcclient.InferInput("INPUT0", [2, 3], "FP32")
    a.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    b = grpcclient.InferInput("TEXT", [2], "BYTES")
    b.set_data_from_numpy(np.array([b"x", b"yz"], dtype=np.object_))
    outs = [grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)]
    req = tc_utils._get_inference_request(
        model_name="simple", inputs=[a, b], model_version="1", request_id="7",
        outputs=outs, sequence_id="corr-1", sequence_start=True, sequence_end=False,
        priority=1, timeout=1000, parameters={"custom": 1.5, "flag": True})
    ours = ours_svc.ModelInferRequest.FromString(req.SerializeToString())
    _assert_same_content(req, ours)
    assert ours.parameters["sequence_id"].string_param == "corr-1"
    assert ours.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert ours.parameters["custom"].double_param == 1.5
    assert len(ours.raw_input_contents) == 2
    assert ours.outputs[0].parameters["classification"].int64_param == 2


# --------------------------------------------------------------------- (d)


def _walk_messages(descs):
    for d in descs:
        yield d
        yield from _walk_messages(d.nested_types)


def _all_messages(file_desc):
    return list(_walk_messages(file_desc.message_types_by_name.values()))


def _all_enums(file_desc):
    enums = list(file_desc.enum_types_by_name.values())
    for m in _all_messages(file_desc):
        enums.extend(m.enum_types)
    return enums


def _is_repeated(f) -> bool:
    if hasattr(f, "is_repeated"):
        return bool(f.is_repeated)
    return f.label == FieldDescriptor.LABEL_REPEATED


def _field_sig(f):
    ref = None
    if f.message_type is not None:
        ref = f.message_type.full_name
    elif f.enum_type is not None:
        ref = f.enum_type.full_name
    return {
        "number": f.number,
        "type": f.type,
        "repeated": _is_repeated(f),
        "ref": ref,
        "oneof": f.containing_oneof.name if f.containing_oneof is not None else None,
        "has_presence": f.has_presence,
    }


def _structural_diff():
    """Compare tritonclient's descriptors with ours.

    Returns (missing_or_conflicting, extras_in_ours): lists of strings.
    """
    problems: list[str] = []
    extras: list[str] = []

    for tc_file, our_file in ((tc_mc.DESCRIPTOR, ours_mc.DESCRIPTOR),
                              (tc_svc.DESCRIPTOR, ours_svc.DESCRIPTOR)):
        assert tc_file.package == our_file.package == "inference"

        their_msgs = {m.full_name: m for m in _all_messages(tc_file)}
        our_msgs = {m.full_name: m for m in _all_messages(our_file)}
        for name in sorted(our_msgs.keys() - their_msgs.keys()):
            extras.append(name)
        for name, tm in sorted(their_msgs.items()):
            om = our_msgs.get(name)
            if om is None:
                problems.append(f"missing message {name}")
                continue
            if tm.GetOptions().map_entry != om.GetOptions().map_entry:
                problems.append(f"{name}: map_entry differs")
            if [o.name for o in tm.oneofs] != [o.name for o in om.oneofs]:
                # Ours may add oneofs only if documented.
                their_oneofs = [o.name for o in tm.oneofs]
                our_oneofs = [o.name for o in om.oneofs]
                if our_oneofs[: len(their_oneofs)] != their_oneofs:
                    problems.append(f"{name}: oneofs {their_oneofs} vs ours {our_oneofs}")
                else:
                    extras.extend(f"{name}.{o}" for o in our_oneofs[len(their_oneofs):])
            our_by_number = {f.number: f for f in om.fields}
            for tf in tm.fields:
                fname = f"{name}.{tf.name}"
                of = om.fields_by_name.get(tf.name)
                if of is None:
                    renamed = RENAMED_IN_TRITONCLIENT.get(fname)
                    if renamed is not None:
                        of = our_by_number.get(tf.number)
                        if of is None or f"{name}.{of.name}" != renamed[0]:
                            problems.append(f"{fname}: documented rename to {renamed[0]} "
                                            "does not match our descriptor")
                            continue
                    else:
                        clash = our_by_number.get(tf.number)
                        hint = f" (our field {tf.number} is '{clash.name}')" if clash else ""
                        problems.append(f"missing field {fname}{hint}")
                        continue
                ts, os_ = _field_sig(tf), _field_sig(of)
                if ts != os_:
                    diffs = {k: (ts[k], os_[k]) for k in ts if ts[k] != os_[k]}
                    problems.append(f"{fname}: tritonclient vs ours differ: {diffs}")
            their_field_names = {f.name for f in tm.fields}
            renamed_targets = {v[0] for v in RENAMED_IN_TRITONCLIENT.values()}
            for of in om.fields:
                full = f"{name}.{of.name}"
                if of.name not in their_field_names and full not in renamed_targets:
                    extras.append(full)

        their_enums = {e.full_name: e for e in _all_enums(tc_file)}
        our_enums = {e.full_name: e for e in _all_enums(our_file)}
        for name in sorted(our_enums.keys() - their_enums.keys()):
            extras.append(name)
        for name, te in sorted(their_enums.items()):
            oe = our_enums.get(name)
            if oe is None:
                problems.append(f"missing enum {name}")
                continue
            tv = {v.name: v.number for v in te.values}
            ov = {v.name: v.number for v in oe.values}
            for vname, num in tv.items():
                if vname not in ov:
                    problems.append(f"missing enum value {name}.{vname}")
                elif ov[vname] != num:
                    problems.append(f"{name}.{vname}: {num} vs ours {ov[vname]}")
            # Enum values are siblings of the enum in protobuf scoping, but we
            # report them under the enum for readability.
            extras.extend(f"{name}.{v}" for v in sorted(ov.keys() - tv.keys()))

        their_svcs = {s.full_name: s for s in tc_file.services_by_name.values()}
        our_svcs = {s.full_name: s for s in our_file.services_by_name.values()}
        for name in sorted(our_svcs.keys() - their_svcs.keys()):
            extras.append(name)
        for name, ts in their_svcs.items():
            osv = our_svcs.get(name)
            if osv is None:
                problems.append(f"missing service {name}")
                continue
            for tmeth in ts.methods:
                ometh = osv.methods_by_name.get(tmeth.name)
                if ometh is None:
                    problems.append(f"missing rpc {name}.{tmeth.name}")
                    continue
                tsig = (tmeth.input_type.full_name, tmeth.output_type.full_name,
                        getattr(tmeth, "client_streaming", None),
                        getattr(tmeth, "server_streaming", None))
                osig = (ometh.input_type.full_name, ometh.output_type.full_name,
                        getattr(ometh, "client_streaming", None),
                        getattr(ometh, "server_streaming", None))
                if tsig != osig:
                    problems.append(f"rpc {name}.{tmeth.name}: {tsig} vs ours {osig}")
            their_meths = {m.name for m in ts.methods}
            extras.extend(f"{name}.{m.name}" for m in osv.methods if m.name not in their_meths)

    return problems, extras


def test_structure_matches_tritonclient():
    problems, extras = _structural_diff()
    assert not problems, "naiad protos lack or contradict tritonclient's:\n" + "\n".join(
        problems)

    documented = set(TRITON_MAIN_ADDITIONS)
    undocumented = sorted(set(extras) - documented)
    if _tritonclient_version() >= REFERENCE_TRITONCLIENT:
        # With the reference (or a newer) tritonclient every extra element of
        # ours must be a documented Triton-main addition.
        assert not undocumented, (
            "naiad protos define elements tritonclient "
            f"{importlib.metadata.version('tritonclient')} does not have; document them in "
            "TRITON_MAIN_ADDITIONS or remove them:\n" + "\n".join(undocumented))
        # And every documented addition must still be an extra (no stale notes).
        assert documented <= set(extras), sorted(documented - set(extras))
    else:
        # An older tritonclient lacks newer Triton fields: ours is a superset,
        # which is the expected, explicit outcome here.
        assert set(extras) >= documented


def test_structure_covers_known_triton_elements():
    """Spot checks of elements added to Triton over time (guards the walker)."""
    d = ours_mc.ModelConfig.DESCRIPTOR
    assert d.fields_by_name["runtime"].number == 25
    assert d.fields_by_name["model_metrics"].number == 26
    assert d.fields_by_name["dynamic_batching"].containing_oneof.name == "scheduling_choice"
    assert d.fields_by_name["parameters"].message_type.GetOptions().map_entry
    ens = ours_mc.ModelEnsembling.DESCRIPTOR.fields_by_name["max_inflight_requests"]
    assert ens.number == 2 and ens.type == FieldDescriptor.TYPE_UINT32
    p = ours_svc.InferParameter.DESCRIPTOR
    assert {f.name: f.number for f in p.fields} == {
        "bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4,
        "uint64_param": 5}
    assert ours_svc.InferResponseStatistics.DESCRIPTOR.fields_by_name["cancel"].number == 6
    methods = [m.name for m in ours_svc.DESCRIPTOR.services_by_name[
        "GRPCInferenceService"].methods]
    assert methods == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
        "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting",
        "LogSettings"]
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert health.full_name == "grpc.health.v1.Health"
    assert [m.name for m in health.methods] == ["Check", "Watch"]
    assert health.methods_by_name["Watch"].server_streaming


def test_health_matches_grpcio_health_checking_if_installed():
    hc = pytest.importorskip("grpc_health.v1.health_pb2")
    for name in ("HealthCheckRequest", "HealthCheckResponse"):
        theirs = getattr(hc, name)()
        ours = getattr(health_pb2, name)()
        assert theirs.DESCRIPTOR.full_name == ours.DESCRIPTOR.full_name
        assert [(f.name, f.number, f.type) for f in theirs.DESCRIPTOR.fields] == [
            (f.name, f.number, f.type) for f in ours.DESCRIPTOR.fields]


# -------------------------------------------------------- gen_protos --check


def test_gen_protos_check():
    try:
        tools_version = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("grpcio-tools is not installed")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    if tools_version != gen_protos.GRPCIO_TOOLS_VERSION:
        pytest.skip(f"grpcio-tools {tools_version} installed; generated files are pinned to "
                    f"{gen_protos.GRPCIO_TOOLS_VERSION}")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------- live gRPC with the real client


class _MiniServicer(ours_svc_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request, context):
        return ours_svc.ServerLiveResponse(live=True)

    def ModelConfig(self, request, context):
        resp = ours_svc.ModelConfigResponse()
        text_format.Parse(CONFIG_ENSEMBLE, resp.config)
        resp.config.name = request.name
        return resp

    def ModelInfer(self, request, context):
        # Echo INPUT0 back as OUTPUT0.
        resp = ours_svc.ModelInferResponse(model_name=request.model_name, id=request.id)
        t = request.inputs[0]
        resp.outputs.add(name="OUTPUT0", datatype=t.datatype, shape=t.shape)
        resp.raw_output_contents.append(request.raw_input_contents[0])
        return resp


class _MiniHealth(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_official_client_against_generated_servicer():
    np = pytest.importorskip("numpy")
    grpc = pytest.importorskip("grpc")
    grpcclient = pytest.importorskip("tritonclient.grpc")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ours_svc_grpc.add_GRPCInferenceServiceServicer_to_server(_MiniServicer(), server)
    health_pb2_grpc.add_HealthServicer_to_server(_MiniHealth(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        cfg = client.get_model_config("pipeline")
        assert cfg.config.ensemble_scheduling.max_inflight_requests == 16
        cfg_json = client.get_model_config("pipeline", as_json=True)
        assert cfg_json["config"]["ensemble_scheduling"]["step"][0]["model_name"] == "preprocess"

        data = np.arange(4, dtype=np.int32).reshape(1, 4)
        inp = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
        inp.set_data_from_numpy(data)
        result = client.infer("echo", [inp], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        client.close()

        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(None)
