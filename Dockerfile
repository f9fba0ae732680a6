# naiad on a slim CPU Python base: tritonserver's flags, its ports, a non-root user.
#
#   docker build -t naiad --build-arg NAIAD_EXTRAS=onnx,s3 .
#   docker run -p 8000-8002:8000-8002 -v $PWD/models:/models naiad
#   docker run naiad --model-repository=s3://bucket/models   # credentials from the env
#
# NAIAD_EXTRAS picks the optional dependencies (pyproject.toml): onnx, s3, gcs,
# azure, tracing, ray ... ("" installs the core only).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG NAIAD_EXTRAS=onnx,s3,gcs,azure
WORKDIR /src
COPY pyproject.toml README.md triton_python_backend_utils.py ./
COPY naiad ./naiad
RUN python -m venv /opt/naiad \
 && spec="."; if [ -n "$NAIAD_EXTRAS" ]; then spec=".[${NAIAD_EXTRAS}]"; fi \
 && /opt/naiad/bin/pip install --no-cache-dir "$spec" \
 && /opt/naiad/bin/naiad --version

FROM python:${PYTHON_VERSION}-slim
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin naiad \
 && mkdir -p /models /cache && chown naiad:naiad /models /cache
COPY --from=build /opt/naiad /opt/naiad
ENV PATH=/opt/naiad/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NAIAD_REPOSITORY_CACHE=/cache \
    NAIAD_HEALTH_PORT=8000
USER 1000:1000
WORKDIR /home/naiad
EXPOSE 8000 8001 8002
# ready = every model loaded (tritonserver's --strict-readiness); set
# NAIAD_HEALTH_PORT when --http-port changes
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/v2/health/ready' % os.environ.get('NAIAD_HEALTH_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["naiad"]
CMD ["--model-repository=/models"]
