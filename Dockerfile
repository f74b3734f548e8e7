# imagegen: one image for every role (worker, beat, flower, api, migrate, fal-emulator);
# docker-compose.yml picks the role with the command. Build: docker build -t imagegen .

# Build stage: install the project (no dev extras) into a virtualenv that is copied below,
# so the runtime image holds neither the sources nor pip's build leftovers.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/imagegen
ENV PATH=/opt/imagegen/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# imagegen/: the namespace, symlinks to the three folders above
COPY imagegen ./imagegen
# The tested versions (constraints.txt), not whatever is newest on the day of the build.
RUN pip install --constraint=constraints.txt .

FROM python:3.11-slim
ENV PATH=/opt/imagegen/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed, unprivileged uid; the directories the named volumes mount over are created
# here so that Docker initialises those volumes owned by it.
RUN groupadd --system --gid 10001 imagegen \
    && useradd --system --uid 10001 --gid imagegen --create-home --home-dir /home/imagegen \
        --shell /usr/sbin/nologin imagegen \
    && mkdir -p /var/lib/imagegen/flower /var/lib/imagegen/fal-emulator \
    && chown -R imagegen:imagegen /var/lib/imagegen
COPY --from=build /opt/imagegen /opt/imagegen
USER imagegen
# No sources in the working directory: `celery -A imagegen.worker` imports the installed package.
WORKDIR /home/imagegen
# Every role is a command on the PATH (imagegen, celery); the default prints the CLI help.
CMD ["imagegen", "--help"]
