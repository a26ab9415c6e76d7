# syntax=docker/dockerfile:1
# proxyd: the authenticating forward proxy as a container.
#   docker build -t proxyd .
#   docker run -d --name proxyd -p 3128:3128 -v /srv/proxyd/auth:/etc/proxyd/auth proxyd
# The config is /etc/proxyd/proxyd.yaml (deploy/container/proxyd.yaml; mount your own over
# it). The users file and the nonce secret are in /etc/proxyd/auth, a mounted volume.
# The TLS listener is off in the shipped config, and the image starts without a
# certificate. To turn it on, set tls_listen and tls in your config (the shipped one has
# them commented out), mount a folder with tls.crt and tls.key, and publish 3129 too:
#   -p 3129:3129 -v /srv/proxyd/tls:/etc/proxyd/tls:ro

# Stage 1: install proxyd and its dependencies into a venv. Every dependency, mitmproxy's
# own included, ships manylinux wheels that CPython 3.13 installs (cp313, abi3 or pure
# py3; checked on x86_64), so no compiler (build-essential) is needed; pip's caches stay
# in this stage.
FROM python:3.13-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
RUN python -m venv /opt/proxyd \
    && /opt/proxyd/bin/pip install --no-cache-dir /src

# Stage 2: the runtime, the same base image: the venv's python is a symlink to
# /usr/local/bin/python3.13, which must exist at the same path here.
FROM python:3.13-slim
# PYTHONOPTIMIZE: mitmproxy's per-message typechecks sit behind __debug__ (measured: 14-24%
# more requests/s); proxyd asserts only invariants, never input. Inherited by --workers' processes.
ENV PATH=/opt/proxyd/bin:$PATH \
    PYTHONOPTIMIZE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed uid/gid (10001), so a bind-mounted /etc/proxyd/auth can be chowned on the host
# and Kubernetes' runAsUser/fsGroup can name it. No home, no login shell.
RUN groupadd --system --gid 10001 proxyd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin proxyd \
    && install -d -o 10001 -g 10001 -m 0700 /etc/proxyd/auth
COPY --from=build /opt/proxyd /opt/proxyd
COPY deploy/container/proxyd.yaml /etc/proxyd/proxyd.yaml
COPY deploy/container/healthcheck.py /opt/proxyd/healthcheck.py
# Refuse to build an image whose shipped config does not load.
RUN ["/opt/proxyd/bin/proxyd", "check-config", "/etc/proxyd/proxyd.yaml"]
# Mounted at run time: users.digest (proxyd users …) and nonce.secret (32 random bytes,
# the same file on every replica so each accepts the others' nonces).
VOLUME ["/etc/proxyd/auth"]
USER 10001:10001
# 3128: the proxy. 3129: the TLS listener (only when the config sets tls_listen).
# 9128: /metrics, /healthz, /readyz (keep it inside the cluster).
EXPOSE 3128 3129 9128
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/proxyd/bin/python", "/opt/proxyd/healthcheck.py", "http://127.0.0.1:9128/healthz"]
# SIGTERM drains open tunnels (drain_timeout); give `docker stop` at least that (-t 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/proxyd/bin/proxyd"]
CMD ["serve", "--config", "/etc/proxyd/proxyd.yaml"]
