FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY chainflow chainflow
COPY adapters adapters
COPY devnet devnet
COPY examples examples
RUN pip install --no-cache-dir -e '.[evm,web]'
USER nobody
