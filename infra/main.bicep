// SmartDialog Functions in Azure: `azd up` deploys this template, then the code.
//
// One resource group holding a Flex Consumption function app (Python 3.11) that reaches
// its storage account, Application Insights and Key Vault with one user-assigned
// managed identity. No connection string, key or SmartDialog secret is an app setting:
// storage and telemetry use Entra ID, and the secrets are Key Vault references.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; also seeds the unique suffix of every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource. It must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; empty means rg-<environmentName>.')
param resourceGroupName string = ''

@description('Upper bound of Flex Consumption instances (40 is the lowest the platform accepts). The SmartDialog quota, not CPU, limits throughput.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// SmartDialog settings, one parameter per app setting, filled by azd from the environment
// variable of the same name (infra/main.parameters.json). Empty means "not set": the
// setting is left out and the app's default applies (shared/settings.py is the single
// source of defaults; numbers are strings because Bicep has no floats).
@description('SMARTDIALOG_BASE_URL: the SmartDialog API root. Empty: the production API.')
param smartDialogBaseUrl string = ''

@description('SMARTDIALOG_AUTHORITY: the Azure AD B2C authority that issues SmartDialog tokens.')
param smartDialogAuthority string = ''

@description('SMARTDIALOG_CLIENT_ID: the OAuth client (application) id given by SmartDialog.')
param smartDialogClientId string = ''

@description('SMARTDIALOG_SCOPES: space- or comma-separated OAuth scopes. Empty: the scopes of the certified connector.')
param smartDialogScopes string = ''

@description('SMARTDIALOG_CUSTOMER_ID: the default SmartDialog customer id.')
param smartDialogCustomerId string = ''

@description('SMARTDIALOG_SERVICE_ID: the default SmartDialog service id.')
param smartDialogServiceId string = ''

@description('SMARTDIALOG_PUBLIC_BASE_URL: the https root that SmartDialog calls back (webhooks, delivery reports). Empty: the function app\'s own https://<name>.azurewebsites.net.')
param smartDialogPublicBaseUrl string = ''

@description('SMARTDIALOG_QUOTA_CALLS: upstream calls allowed per quota window, per connection (app default 100).')
param smartDialogQuotaCalls string = ''

@description('SMARTDIALOG_QUOTA_PERIOD_SECONDS: length of the sliding quota window in seconds (app default 60).')
param smartDialogQuotaPeriodSeconds string = ''

@description('SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS: seconds added to the quota window against clock skew.')
param smartDialogQuotaSafetyMarginSeconds string = ''

@description('SMARTDIALOG_QUOTA_WAIT_SECONDS: how long a synchronous action waits for a quota token before answering 429 (over 60 is taken as 60).')
param smartDialogQuotaWaitSeconds string = ''

@description('SMARTDIALOG_SEND_MAX_ATTEMPTS: upstream attempts per queued send before it fails for good.')
param smartDialogSendMaxAttempts string = ''

@description('SMARTDIALOG_SEND_VALIDITY_SECONDS: how long a queued send may wait before it fails as expired.')
param smartDialogSendValiditySeconds string = ''

@description('SMARTDIALOG_SEND_RETRY_BASE_SECONDS: first retry delay of a queued send (doubles per attempt).')
param smartDialogSendRetryBaseSeconds string = ''

@description('SMARTDIALOG_SEND_RETRY_MAX_SECONDS: longest retry delay of a queued send.')
param smartDialogSendRetryMaxSeconds string = ''

@description('SMARTDIALOG_SEND_LEASE_SECONDS: how long a sender owns a message before another delivery may take it over.')
param smartDialogSendLeaseSeconds string = ''

@description('SMARTDIALOG_PACK_MAX_RECIPIENTS: most recipients the sender packs into one upstream call (1 to 1000).')
param smartDialogPackMaxRecipients string = ''

@description('SMARTDIALOG_LANE_BACKSTOP_SECONDS: how long the queue message of a packable send waits, invisible, behind the message that leads its lane (0: every message visible at once).')
param smartDialogLaneBackstopSeconds string = ''

@description('SMARTDIALOG_SEND_STATUS_RETRY_AFTER_SECONDS: the longest Retry-After of a pending status (the answer is the sender estimate: about 1 s while the quota has room).')
param smartDialogSendStatusRetryAfterSeconds string = ''

@description('SMARTDIALOG_QUESTION_POLL_SECONDS: Retry-After of an open question\'s status URL.')
param smartDialogQuestionPollSeconds string = ''

@description('SMARTDIALOG_STATUS_TOKEN_TTL_SECONDS: lifetime of the credential carried by a status URL.')
param smartDialogStatusTokenTtlSeconds string = ''

@description('SMARTDIALOG_DLR_REPORTING_WINDOW_SECONDS: a delivery-report URL works until the send validity ends (or its SendDateTime, when later) plus this window.')
param smartDialogDlrReportingWindowSeconds string = ''

@description('SMARTDIALOG_IDEMPOTENCY_TTL_SECONDS: how long an Idempotency-Key answer is remembered.')
param smartDialogIdempotencyTtlSeconds string = ''

@description('SMARTDIALOG_TRACE_SAMPLING_RATIO: 0 to 1, the share of traces exported, each whole (default 1: all).')
param smartDialogTraceSamplingRatio string = ''

@description('SMARTDIALOG_MAX_REQUEST_BYTES: largest body an HTTP action takes (default 5242880); larger ones get 413.')
param smartDialogMaxRequestBytes string = ''

@description('SMARTDIALOG_SEND_TIMEOUT_SECONDS: the longest one upstream send attempt takes, all of it, from its quota grant on: its request and the re-try after a renewed token, token fetches included (one deadline; the token fetched before the grant has the same bound of its own, and the quota wait is not part of it).')
param smartDialogSendTimeoutSeconds string = ''

@description('SMARTDIALOG_STOP_KEYWORDS: comma-separated inbound texts that opt the sender out of a service (app default STOP and Finnish/Swedish equivalents).')
param smartDialogStopKeywords string = ''

@description('SMARTDIALOG_START_KEYWORDS: comma-separated inbound texts that opt the sender back in (app default START, ALOITA, STARTA).')
param smartDialogStartKeywords string = ''

@description('SMARTDIALOG_DISPATCH_MAX_ATTEMPTS: POSTs of one inbound event to a New Message subscriber before it is dead-lettered.')
param smartDialogDispatchMaxAttempts string = ''

@description('SMARTDIALOG_DISPATCH_RETRY_BASE_SECONDS: first retry delay of a failed subscriber POST (doubles per attempt).')
param smartDialogDispatchRetryBaseSeconds string = ''

@description('SMARTDIALOG_CALLBACK_ALLOWED_HOSTS: internal hosts, *.suffixes and CIDR ranges a DlrUrl or New Message callback may reach (e.g. subscribers inside a virtual network).')
param smartDialogCallbackAllowedHosts string = ''

@description('SMARTDIALOG_CALLBACK_TIMEOUT_SECONDS: deadline of one whole call to a URL we were given (app default 10).')
param smartDialogCallbackTimeoutSeconds string = ''

@description('SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS: how long a sender invocation waits for a quota slot before deferring the message.')
param smartDialogSendQuotaWaitSeconds string = ''

@description('SMARTDIALOG_OPS_ALLOWED_GROUPS: comma-separated Entra ID group object ids whose members may use the operations page (/api/ops).')
param smartDialogOpsAllowedGroups string = ''

@description('SMARTDIALOG_OPS_ALLOWED_ROLES: comma-separated app roles whose holders may use the operations page (/api/ops).')
param smartDialogOpsAllowedRoles string = ''

// Named connections (README "Connections", docs/deploy.md "Named connections"): more SmartDialog
// accounts beside the default one above. Each becomes SMARTDIALOG_CONNECTIONS__<NAME>__* app
// settings, its secrets Key Vault references. An array and an object, not JSON in a string:
// azd puts an environment value into a string parameter unescaped, so the quotes of a JSON
// value broke main.parameters.json; for an array or object parameter it parses the JSON.
@description('SMARTDIALOG_CONNECTIONS: an array of named connections, each {"name", "customers": [...], "customerId", "serviceId", "clientId"} and optionally "quotaCalls", "quotaPeriodSeconds", "quotaSafetyMarginSeconds", "baseUrl", "authority", "scopes". Empty: only the default connection.')
param smartDialogConnections array = []

@description('PAUSE_SENDER: \'true\' stops the outbound queue trigger (the app setting AzureWebJobs.OutboundSender.Disabled) while a deploy\'s versions overlap (docs/deploy.md "Upgrading"); queued sends wait. Empty or \'false\': the sender runs. A parameter, not a hand-set setting, so that a provision keeps it.')
@allowed([
  ''
  'true'
  'false'
])
param pauseSender string = ''

@description('Entra ID app (client) id operators sign in with for /api/ops (App Service Authentication); empty: no sign-in, and the page refuses everyone in Azure.')
param opsAuthClientId string = ''

// Secrets: written to Key Vault, never to app settings. Empty means "do not set".
@secure()
@description('SMARTDIALOG_CLIENT_SECRET: the OAuth client secret (client-credentials flow).')
param smartDialogClientSecret string = ''

@secure()
@description('SMARTDIALOG_REFRESH_TOKEN: a delegated refresh token (instead of a client secret).')
param smartDialogRefreshToken string = ''

@secure()
@description('SMARTDIALOG_CALLBACK_SECRETS: comma-separated HMAC secrets for callback URLs, newest first.')
param smartDialogCallbackSecrets string = ''

@secure()
@description('SMARTDIALOG_CONNECTION_SECRETS: an object of the named connections\' secrets, {"<name>": {"clientSecret": "...", "refreshToken": "..."}}.')
param smartDialogConnectionSecrets object = {}

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-smartdialog-${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'

// Plain SmartDialog settings; an empty parameter leaves its setting out of the app.
var smartDialogSettings = union(
  empty(smartDialogBaseUrl) ? {} : { SMARTDIALOG_BASE_URL: smartDialogBaseUrl },
  empty(smartDialogAuthority) ? {} : { SMARTDIALOG_AUTHORITY: smartDialogAuthority },
  empty(smartDialogClientId) ? {} : { SMARTDIALOG_CLIENT_ID: smartDialogClientId },
  empty(smartDialogScopes) ? {} : { SMARTDIALOG_SCOPES: smartDialogScopes },
  empty(smartDialogCustomerId) ? {} : { SMARTDIALOG_CUSTOMER_ID: smartDialogCustomerId },
  empty(smartDialogServiceId) ? {} : { SMARTDIALOG_SERVICE_ID: smartDialogServiceId },
  empty(smartDialogPublicBaseUrl) ? {} : { SMARTDIALOG_PUBLIC_BASE_URL: smartDialogPublicBaseUrl },
  empty(smartDialogQuotaCalls) ? {} : { SMARTDIALOG_QUOTA_CALLS: smartDialogQuotaCalls },
  empty(smartDialogQuotaPeriodSeconds) ? {} : { SMARTDIALOG_QUOTA_PERIOD_SECONDS: smartDialogQuotaPeriodSeconds },
  empty(smartDialogQuotaSafetyMarginSeconds) ? {} : { SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS: smartDialogQuotaSafetyMarginSeconds },
  empty(smartDialogQuotaWaitSeconds) ? {} : { SMARTDIALOG_QUOTA_WAIT_SECONDS: smartDialogQuotaWaitSeconds },
  empty(smartDialogSendMaxAttempts) ? {} : { SMARTDIALOG_SEND_MAX_ATTEMPTS: smartDialogSendMaxAttempts },
  empty(smartDialogSendValiditySeconds) ? {} : { SMARTDIALOG_SEND_VALIDITY_SECONDS: smartDialogSendValiditySeconds },
  empty(smartDialogSendRetryBaseSeconds) ? {} : { SMARTDIALOG_SEND_RETRY_BASE_SECONDS: smartDialogSendRetryBaseSeconds },
  empty(smartDialogSendRetryMaxSeconds) ? {} : { SMARTDIALOG_SEND_RETRY_MAX_SECONDS: smartDialogSendRetryMaxSeconds },
  empty(smartDialogSendLeaseSeconds) ? {} : { SMARTDIALOG_SEND_LEASE_SECONDS: smartDialogSendLeaseSeconds },
  empty(smartDialogSendStatusRetryAfterSeconds) ? {} : { SMARTDIALOG_SEND_STATUS_RETRY_AFTER_SECONDS: smartDialogSendStatusRetryAfterSeconds },
  empty(smartDialogQuestionPollSeconds) ? {} : { SMARTDIALOG_QUESTION_POLL_SECONDS: smartDialogQuestionPollSeconds },
  empty(smartDialogStatusTokenTtlSeconds) ? {} : { SMARTDIALOG_STATUS_TOKEN_TTL_SECONDS: smartDialogStatusTokenTtlSeconds },
  empty(smartDialogDlrReportingWindowSeconds) ? {} : { SMARTDIALOG_DLR_REPORTING_WINDOW_SECONDS: smartDialogDlrReportingWindowSeconds },
  empty(smartDialogIdempotencyTtlSeconds) ? {} : { SMARTDIALOG_IDEMPOTENCY_TTL_SECONDS: smartDialogIdempotencyTtlSeconds },
  empty(smartDialogTraceSamplingRatio) ? {} : { SMARTDIALOG_TRACE_SAMPLING_RATIO: smartDialogTraceSamplingRatio },
  empty(smartDialogSendTimeoutSeconds) ? {} : { SMARTDIALOG_SEND_TIMEOUT_SECONDS: smartDialogSendTimeoutSeconds },
  empty(smartDialogMaxRequestBytes) ? {} : { SMARTDIALOG_MAX_REQUEST_BYTES: smartDialogMaxRequestBytes },
  empty(smartDialogStopKeywords) ? {} : { SMARTDIALOG_STOP_KEYWORDS: smartDialogStopKeywords },
  empty(smartDialogStartKeywords) ? {} : { SMARTDIALOG_START_KEYWORDS: smartDialogStartKeywords },
  empty(smartDialogDispatchMaxAttempts) ? {} : { SMARTDIALOG_DISPATCH_MAX_ATTEMPTS: smartDialogDispatchMaxAttempts },
  empty(smartDialogDispatchRetryBaseSeconds) ? {} : { SMARTDIALOG_DISPATCH_RETRY_BASE_SECONDS: smartDialogDispatchRetryBaseSeconds },
  empty(smartDialogSendQuotaWaitSeconds) ? {} : { SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS: smartDialogSendQuotaWaitSeconds },
  empty(smartDialogCallbackAllowedHosts) ? {} : { SMARTDIALOG_CALLBACK_ALLOWED_HOSTS: smartDialogCallbackAllowedHosts },
  empty(smartDialogCallbackTimeoutSeconds) ? {} : { SMARTDIALOG_CALLBACK_TIMEOUT_SECONDS: smartDialogCallbackTimeoutSeconds },
  empty(smartDialogPackMaxRecipients) ? {} : { SMARTDIALOG_PACK_MAX_RECIPIENTS: smartDialogPackMaxRecipients },
  empty(smartDialogLaneBackstopSeconds) ? {} : { SMARTDIALOG_LANE_BACKSTOP_SECONDS: smartDialogLaneBackstopSeconds },
  empty(smartDialogOpsAllowedGroups) ? {} : { SMARTDIALOG_OPS_ALLOWED_GROUPS: smartDialogOpsAllowedGroups },
  empty(smartDialogOpsAllowedRoles) ? {} : { SMARTDIALOG_OPS_ALLOWED_ROLES: smartDialogOpsAllowedRoles }
)

// The named connections' plain settings as {name, value} pairs; a field not given is left out.
// Key Vault secret names take no '_': a connection's name is lower case with '-' (as the app names it).
var connectionNames = [for connection in smartDialogConnections: toLower(replace(connection.name, '_', '-'))]
var connectionSettingPairs = [for connection in smartDialogConnections: [
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__CUSTOMERS'
    value: contains(connection, 'customers') ? join(connection.customers, ',') : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__CUSTOMER_ID'
    value: contains(connection, 'customerId') ? string(connection.customerId) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__SERVICE_ID'
    value: contains(connection, 'serviceId') ? string(connection.serviceId) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__CLIENT_ID'
    value: contains(connection, 'clientId') ? string(connection.clientId) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__QUOTA_CALLS'
    value: contains(connection, 'quotaCalls') ? string(connection.quotaCalls) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__QUOTA_PERIOD_SECONDS'
    value: contains(connection, 'quotaPeriodSeconds') ? string(connection.quotaPeriodSeconds) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__QUOTA_SAFETY_MARGIN_SECONDS'
    value: contains(connection, 'quotaSafetyMarginSeconds') ? string(connection.quotaSafetyMarginSeconds) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__BASE_URL'
    value: contains(connection, 'baseUrl') ? string(connection.baseUrl) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__AUTHORITY'
    value: contains(connection, 'authority') ? string(connection.authority) : ''
  }
  {
    name: 'SMARTDIALOG_CONNECTIONS__${toUpper(replace(connection.name, '-', '_'))}__SCOPES'
    value: contains(connection, 'scopes') ? string(connection.scopes) : ''
  }
]]
var connectionSettings = filter(flatten(connectionSettingPairs), setting => !empty(setting.value))

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-smartdialog-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    clientSecret: smartDialogClientSecret
    refreshToken: smartDialogRefreshToken
    callbackSecrets: smartDialogCallbackSecrets
    connectionNames: connectionNames
    connectionSecrets: smartDialogConnectionSecrets
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    queueNames: storage.outputs.queueNames
    tableNames: storage.outputs.tableNames
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.name
  }
}

// The named connections' secrets as Key Vault references, for the ones given.
var connectionSecretSettings = filter(flatten(keyVault.outputs.connectionReferences), setting => !empty(setting.value))

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  // The roles must exist before the host starts, or its first storage and Key Vault calls fail.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    smartDialogSettings: smartDialogSettings
    pauseSender: pauseSender == 'true'
    keyVaultReferences: keyVault.outputs.appSettingReferences
    connectionSettings: concat(connectionSettings, connectionSecretSettings)
  }
}

// Resource logs and metrics of the app, its storage and the vault, into Log Analytics.
module diagnostics 'app/diagnostics.bicep' = {
  name: 'diagnostics'
  scope: rg
  params: {
    workspaceId: monitoring.outputs.logAnalyticsId
    functionAppName: api.outputs.name
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_FUNCTION_URL string = api.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString

// Sign-in for the operations page only; every other function keeps its key (docs/operations.md).
module auth 'app/auth.bicep' = if (!empty(opsAuthClientId)) {
  name: 'auth'
  scope: rg
  params: {
    functionAppName: api.outputs.name
    clientId: opsAuthClientId
  }
}
