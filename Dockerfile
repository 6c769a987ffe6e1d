# The flowagent image: the agent (`agent start QUEUE_ID`) and the server (`agent server start`).
# Build it with scripts/build-image.sh, which fetches the wheels into build/docker-wheels/ first:
# no registry or package index is needed while the image builds.
ARG BASE_IMAGE=flowagent/python-base:bookworm

FROM ${BASE_IMAGE} AS builder
# Dependencies first, in a layer of their own: a change to flowagent alone reinstalls only it.
COPY build/docker-wheels/deps/ /wheels/deps/
# Debian's python3 lacks ensurepip: make the venv bare and run pip from its own wheel.
RUN python3 -m venv --without-pip /opt/flowagent \
    && set -- /wheels/deps/pip-*.whl \
    && /opt/flowagent/bin/python "$1/pip" install --quiet --no-index --no-deps \
        --disable-pip-version-check --no-cache-dir /wheels/deps/*.whl
COPY build/docker-wheels/app/ /wheels/app/
RUN /opt/flowagent/bin/pip install --quiet --no-index --no-deps --find-links /wheels/deps \
        --disable-pip-version-check --no-cache-dir /wheels/app/*.whl \
    && /opt/flowagent/bin/pip check \
    && /opt/flowagent/bin/agent --version

FROM ${BASE_IMAGE}
RUN groupadd --system flowagent \
    && useradd --system --gid flowagent --home-dir /var/lib/flowagent --create-home \
        --shell /usr/sbin/nologin flowagent
COPY --from=builder /opt/flowagent /opt/flowagent
ENV PATH=/opt/flowagent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    AGENT_HOME=/var/lib/flowagent \
    AGENT_LOG_FORMAT=json \
    AGENT_HEALTH_HOST=0.0.0.0 \
    AGENT_HEALTH_PORT=8080
USER flowagent
WORKDIR /var/lib/flowagent
EXPOSE 4200 8080
# The agent's /healthz; the server's container overrides it (see compose.yaml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/flowagent/bin/python", "-m", "agent.health"]
# Exec form: the agent gets SIGTERM itself and drains. Run with --init (compose: init: true)
# so that orphaned flow processes are reaped and a signal during start-up is not ignored.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/flowagent/bin/agent"]
CMD ["--help"]
