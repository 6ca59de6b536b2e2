# azd preprovision hook (azure.yaml) on Windows: the same as callback-secret.sh.
$ErrorActionPreference = 'Stop'
if ($env:SMARTDIALOG_CALLBACK_SECRETS) { exit 0 }
$bytes = New-Object byte[] 36
[System.Security.Cryptography.RandomNumberGenerator]::Create().GetBytes($bytes)
$secret = [Convert]::ToBase64String($bytes).Replace('+', '-').Replace('/', '_')
azd env set SMARTDIALOG_CALLBACK_SECRETS $secret | Out-Null
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
Write-Host 'SMARTDIALOG_CALLBACK_SECRETS was not set: a random one is now in this azd environment (Key Vault after provisioning).'
