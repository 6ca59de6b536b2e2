// App Service Authentication (Easy Auth) for the operations page, /api/ops.
//
// Entra ID signs users in; the platform then passes the signed-in principal to the app in
// X-MS-CLIENT-PRINCIPAL (and strips that header from anything a client sends). Requests
// without a session are let through (AllowAnonymous): every other function keeps its own
// function key or signed callback token, and the ops function refuses anyone who is not signed
// in or not in SMARTDIALOG_OPS_ALLOWED_GROUPS / SMARTDIALOG_OPS_ALLOWED_ROLES.
//
// The app registration (docs/operations.md): web redirect URI
// https://<app>.azurewebsites.net/.auth/login/aad/callback, ID tokens enabled, and a groups
// claim (groupMembershipClaims: SecurityGroup) or app roles assigned to the operators.
param functionAppName string

@description('Application (client) id of the Entra ID app registration operators sign in with.')
param clientId string

@description('Entra ID tenant of that app registration (default: the deployment\'s tenant).')
param tenantId string = tenant().tenantId

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: false
      unauthenticatedClientAction: 'AllowAnonymous'
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: clientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            clientId
            'api://${clientId}'
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

output loginUrl string = 'https://${site.properties.defaultHostName}/.auth/login/aad?post_login_redirect_uri=/api/ops'
