# One image for every kern role: the API (`kern serve`) and the workers (`kern worker`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY kern ./kern
COPY workers ./workers
RUN pip install --no-cache-dir .

# Runs as a plain user; the default command serves the storyteller's API.
RUN useradd --create-home kern
USER kern
EXPOSE 7777
CMD ["kern", "serve", "workers.storyteller:agents", "--host", "0.0.0.0", "--dispatch", "queue"]
