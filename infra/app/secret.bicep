// One Key Vault secret. A module of its own so that the vault module can deploy it
// conditionally while the secret resource itself stays unconditional (and fully scanned).
param vaultName string
param name string
@secure()
param value string
param contentType string = 'text/plain'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:These are credentials whose lifetime is decided elsewhere: SmartDialog's identity provider issues the client secret and refresh token, and callback secrets are rotated by hand with overlap (docs/deploy.md). Key Vault treats a secret's expiry as informational only, so a second, hand-kept expiry here would only drift from the real one.
  parent: vault
  name: name
  properties: {
    value: value
    contentType: contentType
  }
}

// Versioned on purpose: a new value gives the app setting a new value, and a changed app
// setting makes App Service resolve its Key Vault references again at once (not within 24 h).
output referenceUri string = secret.properties.secretUriWithVersion
