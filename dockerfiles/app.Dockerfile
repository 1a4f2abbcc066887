# One thin layer per app, on top of its tier (base or ml). The build context
# is the app's folder (apps/NAME); only its code and its small
# requirements.txt are added.
ARG TIER_IMAGE=onevps/base:latest
FROM ${TIER_IMAGE}

ARG TIER_IMAGE
ARG APP_NAME
ARG APP_TIER
LABEL onevps.app="${APP_NAME}" \
      onevps.tier="${APP_TIER}" \
      onevps.tier.image="${TIER_IMAGE}"

WORKDIR /app
COPY requirements.txt /app/requirements.txt
# Most apps need nothing beyond their tier; skip pip entirely then.
RUN --mount=type=cache,target=/root/.cache/pip \
    if grep -qEv '^[[:space:]]*(#|$)' requirements.txt; then \
        pip install -r requirements.txt; \
    fi
COPY . /app

ENV APP_NAME="${APP_NAME}" \
    APP_TIER="${APP_TIER}"
EXPOSE 8000
# Never root: the base tier's unprivileged user (uid 10001).
USER app
# uvicorn through onevps_serve (the base tier): on `docker stop` it serves what
# the kernel has queued before it stops listening, so no request fails.
CMD ["python", "-m", "onevps_serve", "main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--forwarded-allow-ips", "*"]
