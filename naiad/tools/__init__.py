"""naiad's tools: ``naiad perf``, ``naiad analyze``, ``naiad validate``, ``naiad import``.

Each tool is a sub-command of the ``naiad`` command (registered in
``naiad.cli.SUBCOMMANDS``). ``perf`` and ``analyze`` are clients of the wire
protocols only (KServe v2 HTTP/gRPC with Triton's extensions), so they measure
naiad and a real Triton alike; ``validate`` and ``import`` use the repository
layer (``naiad.repository.config``) and the backends' auto-complete, so they say
what loading the model would say, without a server.
"""
