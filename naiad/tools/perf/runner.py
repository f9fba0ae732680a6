"""``naiad perf`` from options to report: connect, learn the model, generate load, report."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import TextIO

from naiad.tools.perf import data as data_mod
from naiad.tools.perf import model as model_mod
from naiad.tools.perf import report
from naiad.tools.perf.connect import install_loop_policy, make_control
from naiad.tools.perf.control import ControlError
from naiad.tools.perf.engine import LocalEngine, Plan, RemoteEngine
from naiad.tools.perf.options import PerfOptions, UsageError
from naiad.tools.perf.profiler import ProfileError, Profiler
from naiad.tools.perf.stats import PerfStatus


class PerfError(Exception):
    pass


def _plan(o: PerfOptions, info: model_mod.ModelInfo, streams) -> Plan:
    return Plan(
        protocol=o.protocol, url=o.server_url(), model=o.model, version=o.version,
        outputs=[t.name for t in info.outputs], output_datatypes=[t.datatype for t in info.outputs],
        streams=streams, batch_size=o.batch_size, batching=info.batching,
        sequence=info.sequence, sequence_length=o.sequence_length,
        sequence_length_given=o.sequence_length_given,
        sequence_length_variation=o.sequence_length_variation,
        sequence_id_range=o.sequence_id_range, num_of_sequences=o.num_of_sequences,
        request_parameters=o.request_parameters, headers=o.headers,
        input_format=o.input_tensor_format, output_format=o.output_tensor_format,
        shared_memory=o.shared_memory, output_shm_size=o.output_shm_size, streaming=o.streaming,
        grpc_compression=o.grpc_compression,
        ssl={"grpc": o.ssl_grpc_use_ssl, "root": o.ssl_grpc_root_certifications_file,
             "key": o.ssl_grpc_private_key_file, "chain": o.ssl_grpc_certificate_chain_file,
             "verify_peer": o.ssl_https_verify_peer, "verify_host": o.ssl_https_verify_host,
             "ca": o.ssl_https_ca_certificates_file,
             "cert": o.ssl_https_client_certificate_file,
             "key_https": o.ssl_https_private_key_file},
        keep_outputs=bool(o.profile_export_file), async_mode=o.async_mode,
        max_threads=o.max_threads, distribution=o.request_distribution)


@dataclasses.dataclass
class PerfRun:
    """A finished run: the reported levels and what they were measured on."""
    statuses: list[PerfStatus]
    model: model_mod.ModelInfo
    include_server_stats: bool
    options: PerfOptions
    streams: list = dataclasses.field(default_factory=list)


async def run_async(o: PerfOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> PerfRun:
    probe_plan = _plan(o, model_mod.ModelInfo("", "", "", [], [], 0, False, False, False,
                                              False, False), [])
    control = make_control(probe_plan)
    engines: list = []
    try:
        try:
            meta = await control.server_metadata()
            info = await model_mod.load(control, o.model, o.version)
        except (ControlError, OSError, ConnectionError) as exc:
            raise PerfError(f"failed to get model information for '{o.model}': {exc}") from None
        except Exception as exc:  # noqa: BLE001 - gRPC/HTTP connection failures
            raise PerfError(f"unable to reach the server at {o.server_url()}: {exc}") from None
        if o.batch_size > 1 and not info.batching:
            raise PerfError("can not specify batch size > 1 as the model does not support "
                            "batching")
        if info.batching and o.batch_size > info.max_batch_size:
            raise PerfError(f"expecting batch size <= {info.max_batch_size} for model "
                            f"'{info.name}'")
        if info.decoupled and not o.streaming:
            raise PerfError(f"model '{info.name}' is decoupled: measure it with -i grpc "
                            "--streaming")
        if info.sequence and not o.async_given:
            o.async_mode = True  # perf_analyzer's default for sequence models
        try:
            streams = data_mod.load(o.input_data, info, o.shapes, o.string_length,
                                    o.string_data)
        except data_mod.DataError as exc:
            raise PerfError(str(exc)) from None
        plan = _plan(o, info, streams)
        report.print_settings(o, info, out)
        if o.workers == 1:
            engines = [LocalEngine(plan)]
        else:
            engines = [RemoteEngine(plan, i, o.workers) for i in range(o.workers)]
        try:
            await asyncio.gather(*[e.open() for e in engines])
        except Exception as exc:  # noqa: BLE001
            raise PerfError(f"unable to start the load generator: {exc}") from None
        profiler = Profiler(o, info, control, engines, out, err)
        profiler.include_server_stats = "statistics" in meta.get("extensions", [])
        try:
            statuses = await profiler.profile()
        except ProfileError as exc:
            raise PerfError(str(exc)) from None
        return PerfRun(statuses, info, profiler.include_server_stats, o, streams)
    finally:
        for e in engines:
            try:
                await e.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                pass
        await control.close()


def run(o: PerfOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> PerfRun:
    install_loop_policy()
    return asyncio.run(run_async(o, out, err))


def finish(result: PerfRun, out: TextIO = sys.stdout) -> None:
    o = result.options
    report.print_summary(result.statuses, o, out)
    if o.filename:
        report.write_csv(o.filename, result.statuses, o, result.model,
                         result.include_server_stats)
    if o.profile_export_file:
        report.write_export(o.profile_export_file, result.statuses, o, result.model,
                            result.streams)
    if o.plot and result.statuses:
        report.plot(o.plot, result.statuses, o, f"{o.model} over {o.protocol.upper()}")


def main(argv: list[str]) -> int:
    from naiad.tools.perf.options import parse

    try:
        o = parse(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run(o)
    except PerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        finish(result)
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if result.statuses else 1
