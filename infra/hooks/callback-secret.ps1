# azd preprovision hook (azure.yaml) on Windows: the same as callback-secret.sh, and the app's
# rule (shared/signing.py, secrets_problem): comma-separated, blanks ignored, at least one, each
# at least 32 bytes. Never print a secret.
$ErrorActionPreference = 'Stop'
$secrets = @("$env:SMARTDIALOG_CALLBACK_SECRETS".Split(',') | ForEach-Object { $_.Trim() } | Where-Object { $_ })
$short = @(for ($i = 0; $i -lt $secrets.Count; $i++) {
    if ([Text.Encoding]::UTF8.GetByteCount($secrets[$i]) -lt 32) { $i + 1 }
})
if ($secrets.Count -gt 0 -and $short.Count -eq 0) { exit 0 }
if ($short.Count -gt 0) {
    [Console]::Error.WriteLine("SMARTDIALOG_CALLBACK_SECRETS: secret $($short -join ', ') of $($secrets.Count) is shorter than 32 bytes, and the app would answer 503 on /api/health and refuse every send (docs/deploy.md, step 1).")
    [Console]::Error.WriteLine('A new environment: replace it with a random one (at least 32 bytes), then provision again.')
    [Console]::Error.WriteLine('An environment deployed before: a short secret cannot stay, not even as an old one after a new one. Set one new random secret (dropping the short one; keep after it, comma-separated, only old ones of 32 bytes or more), provision, then re-register each webhook and turn each New Message flow off and on: URLs signed with the short secret then fail (docs/inbound.md).')
    exit 1
}
[Console]::Error.WriteLine('SMARTDIALOG_CALLBACK_SECRETS is not set in this azd environment (docs/deploy.md, step 1).')
[Console]::Error.WriteLine('A new environment: give it a random one (at least 32 bytes), then provision again.')
[Console]::Error.WriteLine('An environment deployed before: set the live value from Key Vault (secret smartdialog-callback-secrets), never a new one.')
exit 1
