#!/bin/sh
# azd preprovision hook (azure.yaml): give a new environment its SMARTDIALOG_CALLBACK_SECRETS.
# Without one the app answers 503 on /api/health and holds every send back, although
# `azd up` succeeds. An environment that has a value keeps it: rotating is docs/deploy.md's
# "Rotating the callback secrets". azd runs hooks with the environment's values set.
set -eu
if [ -n "${SMARTDIALOG_CALLBACK_SECRETS:-}" ]; then
  exit 0
fi
if [ -n "${AZURE_KEY_VAULT_NAME:-}" ]; then
  # Provisioned before (a fresh clone, a CI job without the variable): a new secret would
  # break every URL signed with the live one (reading it needs a Key Vault data role).
  echo "SMARTDIALOG_CALLBACK_SECRETS is not set, but this environment was provisioned before." >&2
  echo "Set it to the live value first, e.g.:" >&2
  echo "  azd env set SMARTDIALOG_CALLBACK_SECRETS \"\$(az keyvault secret show --vault-name $AZURE_KEY_VAULT_NAME --name smartdialog-callback-secrets --query value -o tsv)\"" >&2
  exit 1
fi
# 48 URL-safe characters from 36 random bytes: more than the 32 bytes the app requires.
secret=$(head -c 36 /dev/urandom | base64 | tr -d '\n' | tr '+/' '-_')
azd env set SMARTDIALOG_CALLBACK_SECRETS "$secret" > /dev/null
echo "SMARTDIALOG_CALLBACK_SECRETS was not set: a random one is now in this azd environment (Key Vault after provisioning)."
