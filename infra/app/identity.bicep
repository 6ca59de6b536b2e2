// The one identity the function app uses for storage, telemetry and Key Vault.
// User-assigned, so its roles can be granted before the app exists (no first-start race).
param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
