// Key Vault for the SmartDialog secrets. RBAC mode (no access policies), soft delete and
// purge protection on. Each secret is written only when its value is given, and the app
// setting that references it exists only then: an unresolved reference would reach the
// app as the literal "@Microsoft.KeyVault(...)" text, which must never act as a secret.
param name string
param location string
param tags object = {}

@description('Days a deleted vault or secret stays recoverable (and its name reserved).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 7

@secure()
param clientSecret string = ''
@secure()
param refreshToken string = ''
@secure()
param callbackSecrets string = ''

@description('Names of the named connections (SMARTDIALOG_CONNECTIONS), lower case.')
param connectionNames array = []
@secure()
@description('SMARTDIALOG_CONNECTION_SECRETS: {"<name>": {"clientSecret": "...", "refreshToken": "..."}}.')
param connectionSecrets object = {}

// Each named connection's secrets, '' where not given (such a secret and its setting are left out).
var connectionClientSecrets = [for name in connectionNames: contains(connectionSecrets, name) ? (contains(connectionSecrets[name], 'clientSecret') ? string(connectionSecrets[name].clientSecret) : '') : '']
var connectionRefreshTokens = [for name in connectionNames: contains(connectionSecrets, name) ? (contains(connectionSecrets[name], 'refreshToken') ? string(connectionSecrets[name].refreshToken) : '') : '']

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:No virtual network in this template, and Flex Consumption without VNet integration has no fixed outbound addresses to allow, so the firewall would lock the app out of its own references. Access is Entra ID RBAC only.
  // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: the app resolves its Key Vault references over the public endpoint; every request still needs an Entra ID token with the Key Vault Secrets User role.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

module clientSecretValue 'secret.bicep' = if (!empty(clientSecret)) {
  name: 'secret-client-secret'
  params: {
    vaultName: vault.name
    name: 'smartdialog-client-secret'
    value: clientSecret
  }
}

module refreshTokenValue 'secret.bicep' = if (!empty(refreshToken)) {
  name: 'secret-refresh-token'
  params: {
    vaultName: vault.name
    name: 'smartdialog-refresh-token'
    value: refreshToken
  }
}

module callbackSecretsValue 'secret.bicep' = if (!empty(callbackSecrets)) {
  name: 'secret-callback-secrets'
  params: {
    vaultName: vault.name
    name: 'smartdialog-callback-secrets'
    value: callbackSecrets
    contentType: 'text/csv'
  }
}

// A deployment's name is at most 64 characters and a connection's name may be 64 itself:
// its first 24 characters for the reader, and uniqueString (13 characters) keeps names apart.
module connectionClientSecretValues 'secret.bicep' = [for (name, i) in connectionNames: if (!empty(connectionClientSecrets[i])) {
  name: 'secret-${take(name, 24)}-${uniqueString(name)}-client-secret'
  params: {
    vaultName: vault.name
    name: 'smartdialog-connection-${name}-client-secret'
    value: connectionClientSecrets[i]
  }
}]

module connectionRefreshTokenValues 'secret.bicep' = [for (name, i) in connectionNames: if (!empty(connectionRefreshTokens[i])) {
  name: 'secret-${take(name, 24)}-${uniqueString(name)}-refresh-token'
  params: {
    vaultName: vault.name
    name: 'smartdialog-connection-${name}-refresh-token'
    value: connectionRefreshTokens[i]
  }
}]

output appSettingReferences object = union(
  empty(clientSecret) ? {} : {
    SMARTDIALOG_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${clientSecretValue.outputs.referenceUri})'
  },
  empty(refreshToken) ? {} : {
    SMARTDIALOG_REFRESH_TOKEN: '@Microsoft.KeyVault(SecretUri=${refreshTokenValue.outputs.referenceUri})'
  },
  empty(callbackSecrets) ? {} : {
    SMARTDIALOG_CALLBACK_SECRETS: '@Microsoft.KeyVault(SecretUri=${callbackSecretsValue.outputs.referenceUri})'
  }
)
// Per named connection, its secret settings as {name, value} pairs ('' where not given).
output connectionReferences array = [for (name, i) in connectionNames: [
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(name, '-', '_'))}__CLIENT_SECRET'
    value: empty(connectionClientSecrets[i]) ? '' : '@Microsoft.KeyVault(SecretUri=${connectionClientSecretValues[i].outputs.referenceUri})'
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(name, '-', '_'))}__REFRESH_TOKEN'
    value: empty(connectionRefreshTokens[i]) ? '' : '@Microsoft.KeyVault(SecretUri=${connectionRefreshTokenValues[i].outputs.referenceUri})'
  }
]]
output name string = vault.name
