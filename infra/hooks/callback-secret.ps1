# azd preprovision hook (azure.yaml) on Windows: the same as callback-secret.sh.
$ErrorActionPreference = 'Stop'
if ($env:SMARTDIALOG_CALLBACK_SECRETS) { exit 0 }
[Console]::Error.WriteLine('SMARTDIALOG_CALLBACK_SECRETS is not set in this azd environment (docs/deploy.md, step 1).')
[Console]::Error.WriteLine('A new environment: give it a random one (at least 32 bytes), then provision again.')
[Console]::Error.WriteLine('An environment deployed before: set the live value from Key Vault (secret smartdialog-callback-secrets), never a new one.')
exit 1
