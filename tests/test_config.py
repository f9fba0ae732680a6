"""config.pbtxt: parsing, locating errors, completion, validation, versions, JSON.

Unit tests of ``naiad.repository.config``. Where a test states Triton's
behaviour, it was checked against the reference Triton 2.51 (see
/work/shared/reference/triton.sh): e.g. the completed config JSON below is
byte-for-byte what Triton's ``GET /v2/models/add_sub/config`` returns.
"""

from __future__ import annotations

import json
import logging
import textwrap

import pytest

from naiad.protocol import model_config_pb2 as mc
from naiad.protocol.config_json import config_to_dict
from naiad.repository import config as cfg
from naiad.repository.config import ConfigError

PATH = "/models/m/config.pbtxt"


def parse(text: str) -> mc.ModelConfig:
    return cfg.parse_config_text(textwrap.dedent(text), PATH)


def complete(text: str, name: str = "m") -> tuple[mc.ModelConfig, str]:
    """Parse, normalise and validate as the repository manager does."""
    text = textwrap.dedent(text)
    config = cfg.parse_config_text(text, PATH)
    if not config.name:
        config.name = name
    cfg.normalize(config)
    cfg.validate(config, name, PATH, text)
    return config, text


def error_of(text: str, name: str = "m") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        complete(text, name)
    return info.value


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    hits = [i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line]
    return hits[occurrence - 1]


# ---------------------------------------------------------------------------
# parse errors: file, line, column, problem
# ---------------------------------------------------------------------------


def test_syntax_error_names_file_line_and_problem():
    text = """\
        name: "m"
        backend: "python"
        input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }
        output [ ]
        """
    with pytest.raises(ConfigError) as info:
        parse(text)
    err = info.value
    assert err.path == PATH and err.line == 4
    assert str(err).startswith(f"{PATH}:4: failed to parse model configuration: column 1: ")
    assert 'Expected ","' in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("body, line, problem", [
    ('name: "m"\nfoo: 1\n', 2, 'no field named "foo"'),
    ('name: "m"\ninput [ { name: "A" data_type: TYPE_FOO } ]\n', 2, "TYPE_FOO"),
    ('name: "m"\nmax_batch_size: "eight"\n', 2, "integer"),
    ('name: "m"\ninstance_group [ { count: 1 }\n', 3, ""),  # unterminated list at EOF
])
def test_parse_errors(body, line, problem):
    with pytest.raises(ConfigError) as info:
        cfg.parse_config_text(body, PATH)
    assert info.value.line == line
    assert str(info.value).startswith(f"{PATH}:{line}: failed to parse model configuration")
    assert problem in str(info.value)
    # the problem, not a copy of the offending source line
    assert "'input [" not in str(info.value)


def test_read_config_missing_and_unreadable(tmp_path):
    config, path, text = cfg.read_config(str(tmp_path))
    assert text is None and path.endswith("config.pbtxt") and config == mc.ModelConfig()
    (tmp_path / "config.pbtxt").write_bytes(b"name: \"\xff\xfe\"")
    with pytest.raises(ConfigError, match="unable to read model configuration"):
        cfg.read_config(str(tmp_path))


# ---------------------------------------------------------------------------
# _field_lines on realistic configs
# ---------------------------------------------------------------------------

REALISTIC = """\
# a comment at the top
name: "m"   # trailing comment
backend: "python"
max_batch_size: 8
input [
  {
    name: "A"
    data_type: TYPE_FP32
    dims: [ -1, 4 ]
  },
  {
    # comment inside an item
    name: "B"
    data_type: TYPE_INT64
    dims: [ 2 ]
    reshape: { shape: [ 1, 2 ] }
  }
]
output {
  name: "X"
  data_type: TYPE_FP32
  dims: [ 4 ]
}
output <
  name: "Y"
  data_type: TYPE_STRING
  dims: 1
>
instance_group [ { count: 2, kind: KIND_CPU }, { name: "g" } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}
parameters { key: "k" value: { string_value: "v" } }
parameters: {
  key: "k2"
  value: { string_value: "v2" }
}
version_policy: { specific { versions: [ 1, 3 ] } }
"""


def test_field_lines_realistic():
    text = REALISTIC
    parse(text)  # it is valid
    lines = cfg._field_lines(text)
    ln = lambda needle, n=1: line_of(text, needle, n)  # noqa: E731
    assert lines[("name",)] == 2
    assert lines[("backend",)] == 3
    assert lines[("max_batch_size",)] == 4
    assert lines[("input",)] == 5
    assert lines[("input", 0)] == ln("{", 1)
    assert lines[("input", 0, "name")] == ln('name: "A"')
    assert lines[("input", 0, "dims")] == ln("dims: [ -1, 4 ]")
    assert lines[("input", 1)] == ln("{", 2)
    assert lines[("input", 1, "name")] == ln('name: "B"')
    assert lines[("input", 1, "data_type")] == ln("TYPE_INT64")
    assert lines[("input", 1, "reshape")] == ln("reshape")
    assert lines[("input", 1, "reshape", "shape")] == ln("reshape")
    assert lines[("output", 0)] == ln("output {")
    assert lines[("output", 0, "name")] == ln('name: "X"')
    assert lines[("output", 1)] == ln("output <")
    assert lines[("output", 1, "dims")] == ln("dims: 1")
    assert lines[("instance_group", 0)] == ln("instance_group")
    assert lines[("instance_group", 1, "name")] == ln("instance_group")
    assert lines[("dynamic_batching",)] == ln("dynamic_batching")
    assert lines[("dynamic_batching", "preferred_batch_size")] == ln("preferred_batch_size")
    assert lines[("dynamic_batching", "max_queue_delay_microseconds")] == ln("max_queue")
    assert lines[("parameters", 0)] == ln('key: "k"')
    assert lines[("parameters", 1)] == ln("parameters: {")
    assert lines[("parameters", 1, "value")] == ln('string_value: "v2"')
    assert lines[("version_policy", "specific", "versions")] == ln("versions: [ 1, 3 ]")


def test_field_lines_never_raises_on_odd_input():
    assert cfg._field_lines("") == {}
    # unknown names, strings where names belong, unbalanced brackets: best effort, no error
    lines = cfg._field_lines('foo { bar: 1 }\n"x"\ninput [ { name: "A" ')
    assert lines[("input",)] == 3


# ---------------------------------------------------------------------------
# validation errors point at the offending field
# ---------------------------------------------------------------------------


def _two_inputs(second_dims: str, style: str = "list") -> str:
    if style == "list":
        return f"""\
            name: "m"
            backend: "python"
            input [
              {{ name: "A" data_type: TYPE_FP32 dims: [ 1 ] }},
              {{
                name: "B"
                data_type: TYPE_FP32
                dims: {second_dims}
              }}
            ]
            output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
            """
    return f"""\
        name: "m"
        backend: "python"
        input {{ name: "A" data_type: TYPE_FP32 dims: [ 1 ] }}
        input {{
          name: "B"
          data_type: TYPE_FP32
          dims: {second_dims}
        }}
        output {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}
        """


@pytest.mark.parametrize("style", ["list", "blocks"])
def test_zero_dim_in_second_input_points_at_its_dims(style):
    text = _two_inputs("[ 2, 0 ]", style)
    err = error_of(text)
    assert err.line == line_of(text, "dims: [ 2, 0 ]")
    assert err.path == PATH
    assert str(err) == (f"{PATH}:{err.line}: model input 'B' dimension must be integer >= 1, "
                        "or -1 to indicate a variable-size dimension")


def test_name_mismatch():
    text = """\
        # the model folder is "m"
        name: "other"
        backend: "python"
        """
    err = error_of(text)
    assert err.line == 2
    assert "the model folder is 'm'" in str(err) and "'other'" in str(err)


def test_missing_data_type_points_at_the_input():
    text = """\
        name: "m"
        backend: "python"
        input [
          { name: "A" data_type: TYPE_FP32 dims: [ 1 ] },
          {
            name: "B"
            dims: [ 1 ]
          }
        ]
        """
    err = error_of(text)
    assert err.line == 5  # the second item's "{"
    assert "model input 'B' must specify 'data_type'" in str(err)


def test_missing_dims():
    text = """\
        name: "m"
        backend: "python"
        output { name: "Y" data_type: TYPE_FP32 }
        """
    err = error_of(text)
    assert err.line == 3
    assert "model output 'Y' must specify 'dims'" in str(err)


@pytest.mark.parametrize("dims, reshape, mbs, problem", [
    ("[ 4 ]", "[ 3 ]", 0, "has different size for dims and reshape"),
    ("[ 2 ]", "[ ]", 4, "has different size for dims and reshape"),  # Triton rejects too
    ("[ -1, 4 ]", "[ 2, -1, -1 ]", 0, "different number of variable-size dimensions"),
    ("[ 4 ]", "[ 0, 4 ]", 0, "reshape dimensions must be integer >= 1"),
    ("[ 1 ]", "[ ]", 0, "cannot have empty reshape for non-batching model"),
])
def test_bad_reshape(dims, reshape, mbs, problem):
    text = f"""\
        name: "m"
        backend: "python"
        max_batch_size: {mbs}
        input [
          {{
            name: "A"
            data_type: TYPE_FP32
            dims: {dims}
            reshape: {{ shape: {reshape} }}
          }}
        ]
        """
    err = error_of(text)
    assert problem in str(err)
    assert err.line == line_of(text, "reshape")


@pytest.mark.parametrize("dims, reshape, mbs", [
    ("[ 1 ]", "[ ]", 4),          # the scalar idiom
    ("[ 2, 3 ]", "[ 6 ]", 0),
    ("[ -1, 6 ]", "[ -1, 2, 3 ]", 0),
])
def test_good_reshape(dims, reshape, mbs):
    complete(f"""\
        name: "m"
        backend: "python"
        max_batch_size: {mbs}
        input [ {{ name: "A" data_type: TYPE_FP32 dims: {dims} reshape: {{ shape: {reshape} }} }} ]
        """)


def test_negative_max_batch_size():
    text = 'name: "m"\nbackend: "python"\nmax_batch_size: -1\n'
    err = error_of(text)
    assert err.line == 3
    assert "'max_batch_size' must be non-negative value" in str(err)


def test_duplicate_input_names():
    # Triton loads such a model, but no request can satisfy it ("expected 2 inputs but got
    # 1"); naiad refuses it at load time and says why.
    text = """\
        name: "m"
        backend: "python"
        input [
          { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] },
          { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] }
        ]
        """
    err = error_of(text)
    assert err.line == 5
    assert "duplicate input name 'IN'" in str(err)


def test_preferred_batch_size_larger_than_max_batch_size():
    text = """\
        name: "m"
        backend: "python"
        max_batch_size: 4
        dynamic_batching {
          max_queue_delay_microseconds: 100
          preferred_batch_size: [ 2, 8 ]
        }
        """
    err = error_of(text)
    assert err.line == 6
    assert "dynamic batching preferred size must be <= max batch size for m" in str(err)
    err = error_of(text.replace("[ 2, 8 ]", "[ 0 ]"))
    assert "dynamic batching preferred size must be positive" in str(err)


def test_dynamic_batching_without_batching_is_accepted():
    # Triton 2.51 loads it (and keeps preferred_batch_size empty)
    config, _ = complete('name: "m"\nbackend: "python"\ndynamic_batching { }\n')
    assert list(config.dynamic_batching.preferred_batch_size) == []


def test_priority_levels_need_a_default_level():
    base = 'name: "m"\nbackend: "python"\nmax_batch_size: 8\n'
    err = error_of(base + "dynamic_batching {\n  priority_levels: 3\n}\n")
    assert "default priority level must be in range [1, 3] for m" in str(err)
    assert err.line == 5
    complete(base + "dynamic_batching { priority_levels: 3 default_priority_level: 2 }\n")
    err = error_of(base + "dynamic_batching { priority_levels: 2 default_priority_level: 1\n"
                   "  priority_queue_policy { key: 3 value: { max_queue_size: 1 } } }\n")
    assert "priority queue policy must have priority level in range [1, 2]" in str(err)


def test_python_models_need_no_inputs_or_outputs():
    # Triton loads python models with no inputs and no outputs
    complete('name: "m"\nbackend: "python"\n')


def test_framework_models_need_inputs_and_outputs():
    with pytest.raises(ConfigError, match="at least one input"):
        cfg.validate_io(parse('name: "m"\nbackend: "onnxruntime"\n'), PATH)


def test_unknown_backend_and_platform():
    config = parse('name: "m"\n')
    with pytest.raises(ConfigError, match="unable to determine the backend"):
        cfg.validate(config, "m", PATH)
    config = parse('name: "m"\nplatform: "nope"\n')
    with pytest.raises(ConfigError, match="unexpected platform type 'nope'"):
        cfg.validate(config, "m", PATH)


def test_io_checks_can_be_deferred():
    config = parse('name: "m"\nbackend: "python"\ninput { name: "A" dims: [ 1 ] }\n')
    cfg.normalize(config)
    cfg.validate(config, "m", PATH, io=False)  # model-level checks pass
    with pytest.raises(ConfigError, match="must specify 'data_type'"):
        cfg.validate_io(config, PATH)


def test_error_without_text_names_only_the_file():
    config = parse('name: "m"\nbackend: "python"\nmax_batch_size: -2\n')
    with pytest.raises(ConfigError) as info:
        cfg.validate(config, "m", PATH)  # no text: no line
    assert str(info.value) == f"{PATH}: 'max_batch_size' must be non-negative value"


# ---------------------------------------------------------------------------
# versions
# ---------------------------------------------------------------------------


def _policy(text: str) -> mc.ModelConfig:
    config = parse(f'name: "m"\nbackend: "python"\n{text}\n')
    cfg.normalize(config)
    return config


@pytest.mark.parametrize("policy, expected", [
    ("", [3]),
    ("version_policy: { latest: { num_versions: 2 } }", [2, 3]),
    ("version_policy: { latest: { num_versions: 9 } }", [1, 2, 3]),
    ("version_policy: { all: { } }", [1, 2, 3]),
    ("version_policy: { specific: { versions: [ 1, 3 ] } }", [1, 3]),
    ("version_policy: { specific: { versions: [ 4 ] } }", []),
])
def test_select_versions(policy, expected):
    assert cfg.select_versions(_policy(policy), [3, 1, 2]) == expected


def test_available_versions_ignore_non_numeric_folders(tmp_path, caplog):
    for name in ("1", "2", "10", "abc", "3x", "configs", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a folder")
    with caplog.at_level(logging.WARNING, logger="naiad.repository"):
        assert cfg.available_versions(str(tmp_path)) == [1, 2, 10]
    warned = " ".join(r.getMessage() for r in caplog.records)
    # Triton: "ignore version directory 'abc' which fails to convert to integral number"
    assert "ignore version directory 'abc'" in warned
    assert "'3x'" in warned  # (Triton would take "3x" as version 3; naiad ignores it)
    assert "configs" not in warned and ".hidden" not in warned


def test_version_policy_latest_zero_is_one():
    config = _policy("version_policy: { latest: { } }")
    assert config.version_policy.latest.num_versions == 1


# ---------------------------------------------------------------------------
# --model-config-name and default_model_filename
# ---------------------------------------------------------------------------


def test_model_config_name_picks_configs_file(tmp_path):
    (tmp_path / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 1\n')
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "h100.pbtxt").write_text('name: "m"\nmax_batch_size: 2\n')
    assert cfg.read_config(str(tmp_path), "h100")[0].max_batch_size == 2
    assert cfg.read_config(str(tmp_path), "h100")[1].endswith("configs/h100.pbtxt")
    # no configs/<name>.pbtxt: falls back to config.pbtxt, as Triton does
    assert cfg.read_config(str(tmp_path), "a100")[0].max_batch_size == 1
    assert cfg.read_config(str(tmp_path), "")[0].max_batch_size == 1


def test_default_model_filename(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("")
    config = mc.ModelConfig(name="m")
    cfg.resolve_backend(config, str(tmp_path), [1])
    assert config.backend == "python"
    cfg.normalize(config)
    assert config.default_model_filename == "model.py"
    # a custom file name is kept, and its suffix tells the backend
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "mine.py").write_text("")
    config = mc.ModelConfig(name="m", default_model_filename="mine.py")
    cfg.resolve_backend(config, str(tmp_path), [2])
    cfg.normalize(config)
    assert (config.backend, config.default_model_filename) == ("python", "mine.py")


def test_platform_gives_backend():
    config = mc.ModelConfig(name="m", platform="onnxruntime_onnx")
    cfg.resolve_backend(config, "/nonexistent", [])
    assert config.backend == "onnxruntime"


# ---------------------------------------------------------------------------
# completion and the JSON of the config endpoint
# ---------------------------------------------------------------------------

ADD_SUB = """\
name: "add_sub"
backend: "python"
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group [ { kind: KIND_CPU } ]
"""

# Triton 2.51: GET /v2/models/add_sub/config for the config above (exact text)
TRITON_ADD_SUB_JSON = (
    '{"name":"add_sub","platform":"","backend":"python","runtime":"","version_policy":'
    '{"latest":{"num_versions":1}},"max_batch_size":0,"input":[{"name":"INPUT0","data_type":'
    '"TYPE_FP32","format":"FORMAT_NONE","dims":[4],"is_shape_tensor":false,"allow_ragged_batch":'
    'false,"optional":false,"is_non_linear_format_io":false},{"name":"INPUT1","data_type":'
    '"TYPE_FP32","format":"FORMAT_NONE","dims":[4],"is_shape_tensor":false,"allow_ragged_batch":'
    'false,"optional":false,"is_non_linear_format_io":false}],"output":[{"name":"OUTPUT0",'
    '"data_type":"TYPE_FP32","dims":[4],"label_filename":"","is_shape_tensor":false,'
    '"is_non_linear_format_io":false},{"name":"OUTPUT1","data_type":"TYPE_FP32","dims":[4],'
    '"label_filename":"","is_shape_tensor":false,"is_non_linear_format_io":false}],'
    '"batch_input":[],"batch_output":[],"optimization":{"priority":"PRIORITY_DEFAULT",'
    '"input_pinned_memory":{"enable":true},"output_pinned_memory":{"enable":true},'
    '"gather_kernel_buffer_threshold":0,"eager_batching":false},"instance_group":[{"name":'
    '"add_sub_0","kind":"KIND_CPU","count":1,"gpus":[],"secondary_devices":[],"profile":[],'
    '"passive":false,"host_policy":""}],"default_model_filename":"model.py",'
    '"cc_model_filenames":{},"metric_tags":{},"parameters":{},"model_warmup":[]}'
)


def test_config_json_is_tritons():
    config, _ = complete(ADD_SUB, "add_sub")
    rendered = json.dumps(config_to_dict(config), separators=(",", ":"))
    assert rendered == TRITON_ADD_SUB_JSON  # same keys, order, defaults and number types


def test_implicit_instance_group_is_named_after_the_model():
    # Triton: no instance_group -> one group named "<model>" (instances "<model>_0");
    # unnamed groups given in the config are "<model>_<index>"
    config, _ = complete('name: "m"\nbackend: "python"\n')
    groups = config_to_dict(config)["instance_group"]
    assert [(g["name"], g["kind"], g["count"]) for g in groups] == [("m", "KIND_CPU", 1)]
    config, _ = complete('name: "m"\nbackend: "python"\n'
                         'instance_group [ { count: 3 }, { name: "mine" }, { kind: KIND_CPU } ]\n')
    groups = config_to_dict(config)["instance_group"]
    assert [(g["name"], g["count"]) for g in groups] == [("m_0", 3), ("mine", 1), ("m_2", 1)]


def test_batching_defaults_like_triton():
    base = 'name: "m"\nbackend: "python"\nmax_batch_size: 8\n'
    config, _ = complete(base + "dynamic_batching { }\n")
    assert config_to_dict(config)["dynamic_batching"] == {
        "preferred_batch_size": [8], "max_queue_delay_microseconds": 0,
        "preserve_ordering": False, "priority_levels": 0, "default_priority_level": 0,
        "priority_queue_policy": {}}
    config, _ = complete(base + "sequence_batching { oldest { } }\n")
    sb = config_to_dict(config)["sequence_batching"]
    assert sb["max_sequence_idle_microseconds"] == 1000000
    assert sb["oldest"]["preferred_batch_size"] == [8]
    # given preferred sizes are kept
    config, _ = complete('name: "m"\nbackend: "python"\nmax_batch_size: 8\n'
                         "dynamic_batching { preferred_batch_size: [ 2, 4 ] }\n")
    assert config_to_dict(config)["dynamic_batching"]["preferred_batch_size"] == [2, 4]


def test_int64_fields_are_json_numbers():
    config, _ = complete("""\
        name: "m"
        backend: "python"
        max_batch_size: 4
        input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape { shape: [ -1, 2, 2 ] } } ]
        dynamic_batching {
          max_queue_delay_microseconds: 100
          priority_levels: 2
          default_priority_level: 1
          priority_queue_policy { key: 2 value { default_timeout_microseconds: 5 } }
        }
        version_policy { specific { versions: [ 1 ] } }
        """)
    d = config_to_dict(config)
    assert d["input"][0]["dims"] == [-1, 4]
    assert d["input"][0]["reshape"] == {"shape": [-1, 2, 2]}
    db = d["dynamic_batching"]
    assert db["max_queue_delay_microseconds"] == 100
    assert db["priority_levels"] == 2
    assert db["priority_queue_policy"]["2"]["default_timeout_microseconds"] == 5
    assert d["version_policy"] == {"specific": {"versions": [1]}}
    assert json.loads(json.dumps(d)) == d


def test_ensemble_gets_no_instance_group():
    config = parse("""\
        name: "e"
        platform: "ensemble"
        ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }
        """)
    cfg.normalize(config)
    d = config_to_dict(config)
    assert d["instance_group"] == [] and d["default_model_filename"] == ""
    assert d["ensemble_scheduling"]["step"][0]["model_version"] == -1
