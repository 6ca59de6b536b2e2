// The roles of the app's identity, each on the narrowest resource that works, and no others.
//
// Queue and table data roles are granted per queue and per table (storage.bicep creates every
// one the code uses), so the identity can touch nothing else in the account. Blob data stays
// on the account: the Functions host creates and names its own containers at run time
// (azure-webjobs-hosts, azure-webjobs-secrets), which a template cannot scope in advance.
// A feature that must create a table or queue whose name is known only at run time (a table
// per time bucket, say) needs that data role on the account instead: add it here and say why
// (docs/deploy.md, "Roles").
param principalId string
param storageAccountName string
@description('Every queue of the app and the host (storage.bicep outputs.queueNames).')
param queueNames array
@description('Every table of the app (storage.bicep outputs.tableNames).')
param tableNames array
param applicationInsightsName string
param keyVaultName string

// Built-in role definition ids (the same in every tenant).
var roles = {
  // Host keys and leases, and the deployment package the platform reads at start.
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  // Queue triggers, the host's moves to -poison, and the app's own enqueue / re-enqueue with
  // visibility delay; each on one queue.
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // The quota entities and the app's records; each on one table.
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  // Telemetry to Application Insights with Entra ID authentication.
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  // Reading the secrets behind the Key Vault references.
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource blobData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

resource queueData 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (queueName, i) in queueNames: {
  name: guid(queues[i].id, principalId, roles.storageQueueDataContributor)
  scope: queues[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = [for tableName in tableNames: {
  parent: tableService
  name: tableName
}]

resource tableData 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (tableName, i) in tableNames: {
  name: guid(tables[i].id, principalId, roles.storageTableDataContributor)
  scope: tables[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource telemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource secrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
