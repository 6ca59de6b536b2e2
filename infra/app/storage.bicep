// The app's storage account: the host's blobs (keys, leases), the deployment package
// container, and the queues and tables the code uses (shared/names.py; tests/test_infra.py
// checks these lists against it). Shared-key access is off: only Entra ID principals get in.
param name string
param location string
param tags object = {}
param deploymentContainerName string

// Every queue the app and the Functions host use (tests/test_infra.py derives the list from
// the code): shared/names.py QUEUES, then the "-poison" queue of each queue trigger, where
// the host moves a message it gave up on. Declared here rather than left to the host, so the
// app's queue roles (rbac.bicep) can be scoped to these queues instead of the account.
var queueNames = [
  'smartdialog-outbound'
  'smartdialog-inbound'
  'smartdialog-events'
  'smartdialog-outbound-deadletter'
  'smartdialog-inbound-deliveries'
  'smartdialog-inbound-deadletter'
  'smartdialog-inbound-intake'
  // Delivery-report forwarding to a caller's DlrUrl (queue-triggered; issue 13's guarded client).
  'smartdialog-dlr-forward'
  // Events for the notification rules (Event Grid's storage-queue handler may write here).
  'smartdialog-cloud-events'
  'smartdialog-cloud-events-deadletter'
  'smartdialog-outbound-poison'
  'smartdialog-inbound-intake-poison'
  'smartdialog-inbound-deliveries-poison'
  'smartdialog-dlr-forward-poison'
  'smartdialog-dlr-forward-deadletter'
  'smartdialog-cloud-events-poison'
  // Trigger notifications (delivery report, opt-out, failed send) fanned out to subscribers.
  'smartdialog-trigger-events'
  'smartdialog-trigger-events-poison'
]

// Every table of shared/names.py TABLES (the same test keeps them equal). Tables whose
// names are known only at run time cannot be listed here: see rbac.bicep.
var tableNames = [
  'SmartDialogQuota'
  'SmartDialogMessages'
  'SmartDialogIdempotency'
  'SmartDialogWebhooks'
  'SmartDialogSubscriptions'
  'SmartDialogInboundSeen'
  'SmartDialogSuppressions'
  'SmartDialogDeliveryReports'
  'SmartDialogPacks'
  'SmartDialogBatches'
  'SmartDialogRevokedTokens'
  'SmartDialogDeadLetters'
  'SmartDialogNotificationRules'
  'SmartDialogNotificationState'
  'SmartDialogQuestions'
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No virtual network in this template: Flex Consumption without VNet integration, Logic Apps and Power Automate reach the account over its public endpoint. Shared keys are disabled, so every request needs an Entra ID token and an RBAC role.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: public network access stays enabled because nothing here is VNet-integrated; access is Entra ID + RBAC only (allowSharedKeyAccess false).
  // checkov:skip=CKV_AZURE_206:Locally redundant by default so the template deploys in every Flex Consumption region at the lowest cost. The account also holds lasting data (opt-outs, subscriptions, webhook registrations, notification rules, dead letters), so docs/deploy.md says to choose Standard_ZRS or a geo-redundant SKU where losing a datacenter's copy matters.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    dnsEndpointType: 'Standard'
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Large parts of queue messages and dead letters, by reference (shared/names.py PAYLOADS_CONTAINER).
resource payloadsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'smartdialog-payloads'
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for tableName in tableNames: {
  parent: tableService
  name: tableName
}]

output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
// For rbac.bicep, which scopes the app's data roles to each queue and table.
output queueNames array = queueNames
output tableNames array = tableNames
