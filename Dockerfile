# One image for the API, the workers and Flower; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU wheels of torch: PyPI's Linux wheel would pull gigabytes of CUDA libraries that a
# simulator never uses. Build with --build-arg PIP_EXTRA_INDEX_URL= to use PyPI alone.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY . .
# flower is only a dev extra of the package; the flower service runs from this image too.
RUN pip install -c constraints.txt . "flower==2.2.0" \
    && useradd --create-home --uid 1000 qkan \
    && mkdir /data && chown qkan /data

USER qkan
WORKDIR /home/qkan
EXPOSE 8000
CMD ["qkan-orch", "serve", "--host", "0.0.0.0", "--port", "8000"]
