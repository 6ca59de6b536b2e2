# azd preprovision hook (azure.yaml) on Windows: the same as callback-secret.sh.
$ErrorActionPreference = 'Stop'
if ($env:SMARTDIALOG_CALLBACK_SECRETS) { exit 0 }
if ($env:AZURE_KEY_VAULT_NAME) {
    # Provisioned before: a new secret would break every URL signed with the live one.
    [Console]::Error.WriteLine('SMARTDIALOG_CALLBACK_SECRETS is not set, but this environment was provisioned before.')
    [Console]::Error.WriteLine("Set it to the live value first: azd env set SMARTDIALOG_CALLBACK_SECRETS (az keyvault secret show --vault-name $env:AZURE_KEY_VAULT_NAME --name smartdialog-callback-secrets --query value -o tsv)")
    exit 1
}
$bytes = New-Object byte[] 36
[System.Security.Cryptography.RandomNumberGenerator]::Create().GetBytes($bytes)
$secret = [Convert]::ToBase64String($bytes).Replace('+', '-').Replace('/', '_')
azd env set SMARTDIALOG_CALLBACK_SECRETS $secret | Out-Null
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
Write-Host 'SMARTDIALOG_CALLBACK_SECRETS was not set: a random one is now in this azd environment (Key Vault after provisioning).'
