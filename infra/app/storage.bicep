// The app's storage account: the host's blobs (keys, leases), the deployment package
// container, and the queues and tables the code uses (shared/names.py; tests/test_infra.py
// checks these lists against it). Shared-key access is off: only Entra ID principals get in.
param name string
param location string
param tags object = {}
param deploymentContainerName string

// Exactly shared/names.py QUEUES. The "-poison" queues are left to the Functions host,
// which creates them on the first message it gives up on.
var queueNames = [
  'smartdialog-outbound'
  'smartdialog-inbound'
  'smartdialog-events'
  'smartdialog-outbound-deadletter'
  'smartdialog-inbound-deliveries'
  'smartdialog-inbound-deadletter'
  'smartdialog-inbound-intake'
]

// Exactly shared/names.py TABLES.
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
  'SmartDialogDeadLetters'
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No virtual network in this template: Flex Consumption without VNet integration, Logic Apps and Power Automate reach the account over its public endpoint. Shared keys are disabled, so every request needs an Entra ID token and an RBAC role.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: public network access stays enabled because nothing here is VNet-integrated; access is Entra ID + RBAC only (allowSharedKeyAccess false).
  // checkov:skip=CKV_AZURE_206:Locally redundant storage on purpose: the account holds transient queues, short-lived send records and the deployment package, all recreated by a redeploy; geo-replication would double the storage cost for nothing the app can use.
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
