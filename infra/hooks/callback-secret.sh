#!/bin/sh
# azd preprovision hook (azure.yaml): no provision without SMARTDIALOG_CALLBACK_SECRETS.
# Without it the app would answer 503 on /api/health and hold every send back, although
# `azd up` succeeded. The hook never makes one up: from a fresh clone or a CI job nothing here
# tells a new environment from one deployed before, whose live secret a new one would
# replace, breaking every URL signed with it. azd runs hooks with the environment's values set.
set -eu
if [ -n "${SMARTDIALOG_CALLBACK_SECRETS:-}" ]; then
  exit 0
fi
cat >&2 <<'MESSAGE'
SMARTDIALOG_CALLBACK_SECRETS is not set in this azd environment (docs/deploy.md, step 1).
A new environment: give it a random one, then provision again:
  azd env set SMARTDIALOG_CALLBACK_SECRETS "$(head -c 36 /dev/urandom | base64 | tr '+/' '-_')"
An environment deployed before: set the live value, never a new one (signed URLs use it):
  azd env set SMARTDIALOG_CALLBACK_SECRETS "$(az keyvault secret show --vault-name <vault> \
    --name smartdialog-callback-secrets --query value -o tsv)"
MESSAGE
exit 1
