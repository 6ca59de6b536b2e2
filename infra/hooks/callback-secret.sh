#!/bin/sh
# azd preprovision hook (azure.yaml): no provision without SMARTDIALOG_CALLBACK_SECRETS the app
# takes. Without it the app would answer 503 on /api/health and hold every send back, although
# `azd up` succeeded. The hook never makes one up: from a fresh clone or a CI job nothing here
# tells a new environment from one deployed before, whose live secret a new one would
# replace, breaking every URL signed with it. azd runs hooks with the environment's values set.
# The app's rule (shared/signing.py, secrets_problem): comma-separated, blanks around and
# between commas ignored, at least one, each at least 32 bytes. Never print a secret.
set -eu
count=0
short=""
IFS=,
set -f
for secret in ${SMARTDIALOG_CALLBACK_SECRETS:-}; do
  while :; do case $secret in [[:space:]]*) secret=${secret#?} ;; *) break ;; esac; done
  while :; do case $secret in *[[:space:]]) secret=${secret%?} ;; *) break ;; esac; done
  [ -n "$secret" ] || continue
  count=$((count + 1))
  if [ "$(printf '%s' "$secret" | LC_ALL=C wc -c | tr -d ' ')" -lt 32 ]; then
    short="${short:+$short, }$count"
  fi
done
if [ "$count" -gt 0 ] && [ -z "$short" ]; then
  exit 0
fi
if [ -n "$short" ]; then
  cat >&2 <<MESSAGE
SMARTDIALOG_CALLBACK_SECRETS: secret $short of $count is shorter than 32 bytes, and the app
would answer 503 on /api/health and refuse every send (docs/deploy.md, step 1).
A new environment: replace it with a random one, then provision again:
  azd env set SMARTDIALOG_CALLBACK_SECRETS "\$(head -c 36 /dev/urandom | base64 | tr '+/' '-_')"
An environment deployed before: a short secret cannot stay, not even as an old one after a
new one. Set one new random secret (dropping the short one; keep after it, comma-separated,
only old ones of 32 bytes or more), provision, then re-register each webhook and turn each New
Message flow off and on: URLs signed with the short secret then fail (docs/inbound.md).
MESSAGE
  exit 1
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
