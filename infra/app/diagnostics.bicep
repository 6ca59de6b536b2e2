// Resource logs and platform metrics of the function app, the storage account (and its blob,
// queue and table services) and Key Vault, all into the one Log Analytics workspace, in
// resource-specific tables (FunctionAppLogs, StorageQueueLogs, AZKVAuditLogs, ...).
param workspaceId string
param functionAppName string
param storageAccountName string
param keyVaultName string

@description('Also log every storage read. Off by default: the host polls each triggered queue about once a second while an instance runs (host.json maxPollingInterval), so reads would be most of the ingestion bill and little of its use.')
param storageReadLogs bool = false

var settingName = 'to-log-analytics'

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// Writes and deletes always (who changed what), reads only when asked for (see storageReadLogs).
var storageLogs = [
  {
    category: 'StorageRead'
    enabled: storageReadLogs
  }
  {
    category: 'StorageWrite'
    enabled: true
  }
  {
    category: 'StorageDelete'
    enabled: true
  }
]

var storageMetrics = [
  {
    category: 'Transaction'
    enabled: true
  }
]

resource siteDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: settingName
  scope: site
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

// The account itself has metrics only; its logs come from each service below.
resource storageDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: settingName
  scope: storage
  properties: {
    workspaceId: workspaceId
    metrics: storageMetrics
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: settingName
  scope: blobService
  properties: {
    workspaceId: workspaceId
    logs: storageLogs
    metrics: storageMetrics
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: settingName
  scope: queueService
  properties: {
    workspaceId: workspaceId
    logs: storageLogs
    metrics: storageMetrics
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: settingName
  scope: tableService
  properties: {
    workspaceId: workspaceId
    logs: storageLogs
    metrics: storageMetrics
  }
}

resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: settingName
  scope: vault
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}
