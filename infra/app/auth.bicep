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
  // checkov applies its web-config rules to every sites/config resource; this one holds only the authentication settings.
  // checkov:skip=CKV_AZURE_13:This resource is App Service Authentication (authsettingsV2, platform.enabled true); the rule reads only the legacy v1 siteAuthEnabled property.
  // checkov:skip=CKV_AZURE_63:HTTP logging is a setting of the site's web config, not of its authentication settings; requests are logged to Application Insights.
  // checkov:skip=CKV_AZURE_65:Detailed error messages are a setting of the site's web config, not of its authentication settings.
  // checkov:skip=CKV_AZURE_66:Failed request tracing is a setting of the site's web config, not of its authentication settings; failures are traced in Application Insights.
  // checkov:skip=CKV_AZURE_80:A Python app: no .NET Framework version applies, and this resource holds only the authentication settings.
  // checkov:skip=CKV_AZURE_88:Flex Consumption mounts no Azure Files share, and this resource holds only the authentication settings.
  // checkov:skip=CKV_AZURE_222:Same reason as in api.bicep: the app must be reachable from the internet (SmartDialog callbacks, Power Automate); the page is behind Entra ID sign-in.
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
