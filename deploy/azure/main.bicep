// twokey on Azure Container Apps, with PostgreSQL flexible server, Key Vault and Log Analytics.
//
//   az deployment group create -g <resource group> -f deploy/azure/main.bicep \
//     -p deploy/azure/main.bicepparam
//
// What it makes (one resource group):
//   - a user-assigned managed identity: twokey's identity for Key Vault references, image pulls
//     and Azure Resource Manager (give it the roles of README "Setting up Azure");
//   - a virtual network: the Container Apps environment's subnet and PostgreSQL's delegated
//     subnet (private access: the database has no public endpoint);
//   - PostgreSQL flexible server with database `twokey`; password authentication, the URL with
//     the password kept in Key Vault (twokey does not fetch Entra tokens for PostgreSQL); zone-
//     redundant high availability when zoneRedundant = true;
//   - Key Vault (RBAC, purge protection) holding every secret; the identity may read secrets;
//   - Log Analytics for the environment's logs;
//   - the Container Apps environment (workload profiles, Consumption) and the app: at least two
//     replicas, startup/liveness/readiness probes, secrets as files from Key Vault references.
//
// Resource API versions are stable versions taken from the Azure REST API specifications.
// This template was not compiled here (no Bicep compiler is installable in the project's build
// environment); scripts/check-deploy.sh parses it with the tree-sitter Bicep grammar. Run
// `az bicep build -f deploy/azure/main.bicep` (or `bicep lint`) before you deploy it.

targetScope = 'resourceGroup'

@description('Short name used in every resource name (letters and digits).')
@minLength(3)
@maxLength(12)
param name string = 'twokey'

@description('Region for every resource.')
param location string = resourceGroup().location

@description('The twokey image, e.g. myregistry.azurecr.io/twokey:0.1.0 (build it with deploy/Dockerfile).')
param image string

@description('Registry to pull the image from with the managed identity (grant it AcrPull there first); empty for a public image.')
param registryServer string = ''

@description('twokey config.toml: guards, sign-in, mail sender (main.bicepparam loads config.toml). Secrets, the database URL, the public URL and the Azure identity are set by this template as TWOKEY_… variables.')
param configToml string

@description('The https URL people reach twokey at (a custom domain bound to the app). Empty: the app\'s own https://<name>.<environment domain>.')
param publicUrl string = ''

@description('Replicas at least; two or more keep twokey up while one restarts (README, "Replica model").')
@minValue(2)
param minReplicas int = 2

@maxValue(30)
param maxReplicas int = 4

@description('Spread the environment over availability zones and give PostgreSQL a standby in another zone (zone-redundant HA; needs the GeneralPurpose or MemoryOptimized tier and a region with zones).')
param zoneRedundant bool = false

param vnetAddressPrefix string = '10.40.0.0/16'

@description('Container Apps environment subnet (workload profiles: /27 or larger).')
param appsSubnetPrefix string = '10.40.0.0/23'

@description('PostgreSQL delegated subnet.')
param postgresSubnetPrefix string = '10.40.2.0/24'

@allowed(['13', '14', '15', '16'])
param postgresVersion string = '16'

param postgresSkuName string = 'Standard_B1ms'

@allowed(['Burstable', 'GeneralPurpose', 'MemoryOptimized'])
param postgresSkuTier string = 'Burstable'

param postgresStorageGB int = 32

param postgresAdminLogin string = 'twokeyadmin'

@secure()
@minLength(16)
@description('PostgreSQL administrator password; it goes into Key Vault as part of the database URL.')
param postgresAdminPassword string

@secure()
@description('Client secret of twokey\'s app registration at the OIDC issuer (auth.client_secret).')
param oidcClientSecret string

@secure()
@minLength(32)
@description('Review-link signing key, at least 32 bytes (e.g. openssl rand -base64 48).')
param reviewKey string

@secure()
@description('SMTP relay URL with credentials, e.g. smtp://user:password@smtp.office365.com:587?tls=required.')
param smtpUrl string

@minValue(30)
param logRetentionDays int = 30

var suffix = uniqueString(resourceGroup().id, name)
var keyVaultName = take('kv-${name}-${suffix}', 24)
var postgresName = 'psql-${name}-${suffix}'
// Built-in role "Key Vault Secrets User": read secret values.
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var secretDir = '/run/secrets/twokey'
// The secrets twokey reads as files; each is a Key Vault secret of the same name.
var fileSecrets = ['database-url', 'oidc-client-secret', 'review-key-1', 'smtp-url']

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}-${suffix}'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${name}'
  location: location
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: 'vnet-${name}'
  location: location
  properties: {
    addressSpace: {
      addressPrefixes: [vnetAddressPrefix]
    }
    subnets: [
      {
        name: 'apps'
        properties: {
          addressPrefix: appsSubnetPrefix
          delegations: [
            {
              name: 'apps'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'postgres'
        properties: {
          addressPrefix: postgresSubnetPrefix
          delegations: [
            {
              name: 'postgres'
              properties: {
                serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers'
              }
            }
          ]
        }
      }
    ]
  }
}

resource appsSubnet 'Microsoft.Network/virtualNetworks/subnets@2024-05-01' existing = {
  parent: vnet
  name: 'apps'
}

resource postgresSubnet 'Microsoft.Network/virtualNetworks/subnets@2024-05-01' existing = {
  parent: vnet
  name: 'postgres'
}

// Private access: the server's name resolves inside the virtual network only.
resource postgresDns 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: '${postgresName}.private.postgres.database.azure.com'
  location: 'global'
}

resource postgresDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: postgresDns
  name: 'vnet-${name}'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: postgresName
  location: location
  sku: {
    name: postgresSkuName
    tier: postgresSkuTier
  }
  properties: {
    version: postgresVersion
    administratorLogin: postgresAdminLogin
    administratorLoginPassword: postgresAdminPassword
    authConfig: {
      activeDirectoryAuth: 'Disabled'
      passwordAuth: 'Enabled'
    }
    storage: {
      storageSizeGB: postgresStorageGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 14
      geoRedundantBackup: 'Disabled'
    }
    network: {
      publicNetworkAccess: 'Disabled'
      delegatedSubnetResourceId: postgresSubnet.id
      privateDnsZoneArmResourceId: postgresDns.id
    }
    highAvailability: {
      mode: zoneRedundant ? 'ZoneRedundant' : 'Disabled'
    }
  }
  dependsOn: [
    postgresDnsLink
  ]
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: postgres
  name: 'twokey'
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    // Container Apps reads Key Vault references over the vault's public endpoint; to close it,
    // add a private endpoint for the vault in the virtual network and set this to 'Disabled'.
    publicNetworkAccess: 'Enabled'
  }
}

// Secrets are written through Azure Resource Manager (needs write access to the vault resource,
// not a data-plane role). Rotate them with `az keyvault secret set`; the app picks up a new
// version when it makes a new revision (or restarts).
resource databaseUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'database-url'
  properties: {
    // The administrator login, for a start: for least privilege create a `twokey` role that owns
    // only this database and put its URL here instead (README, "Azure Container Apps").
    value: 'postgres://${uriComponent(postgresAdminLogin)}:${uriComponent(postgresAdminPassword)}@${postgres.properties.fullyQualifiedDomainName}:5432/${database.name}?sslmode=verify-full'
    contentType: 'text/plain'
  }
}

resource oidcSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'oidc-client-secret'
  properties: {
    value: oidcClientSecret
    contentType: 'text/plain'
  }
}

resource reviewKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'review-key-1'
  properties: {
    value: reviewKey
    contentType: 'text/plain'
  }
}

resource smtpSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'smtp-url'
  properties: {
    value: smtpUrl
    contentType: 'text/plain'
  }
}

resource identityReadsSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, keyVaultSecretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: 'cae-${name}'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
    vnetConfiguration: {
      infrastructureSubnetId: appsSubnet.id
      internal: false
    }
    zoneRedundant: zoneRedundant
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

var effectivePublicUrl = empty(publicUrl) ? 'https://${name}.${environment.properties.defaultDomain}' : publicUrl

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: environment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: 8080
        transport: 'auto'
        allowInsecure: false
      }
      registries: empty(registryServer) ? [] : [
        {
          server: registryServer
          identity: identity.id
        }
      ]
      secrets: concat(
        map(fileSecrets, s => {
          name: s
          keyVaultUrl: '${vault.properties.vaultUri}secrets/${s}'
          identity: identity.id
        }),
        [
          {
            name: 'config-toml'
            value: configToml
          }
        ]
      )
    }
    template: {
      // SIGTERM, then up to 30 s for twokey to drain (server.shutdown_grace, 30 s by default).
      terminationGracePeriodSeconds: 45
      containers: [
        {
          name: 'twokey'
          image: image
          args: ['serve', '--config', '/etc/twokey/config.toml']
          env: [
            { name: 'TWOKEY_SERVER_BIND', value: '0.0.0.0:8080' }
            { name: 'TWOKEY_SERVER_PUBLIC_URL', value: effectivePublicUrl }
            { name: 'TWOKEY_DATABASE_URL_FILE', value: '${secretDir}/database-url' }
            { name: 'TWOKEY_AUTH_CLIENT_SECRET_FILE', value: '${secretDir}/oidc-client-secret' }
            { name: 'TWOKEY_MAIL_SMTP_URL_FILE', value: '${secretDir}/smtp-url' }
            { name: 'TWOKEY_REVIEW_KEYS', value: '[{kid=review-1,secret_file=${secretDir}/review-key-1}]' }
            // Container Apps sets IDENTITY_ENDPOINT and IDENTITY_HEADER; twokey asks that endpoint
            // for the user-assigned identity named by its client id.
            { name: 'TWOKEY_AZURE_CREDENTIAL', value: 'managed-identity' }
            { name: 'TWOKEY_AZURE_CLIENT_ID', value: identity.properties.clientId }
            { name: 'TWOKEY_AZURE_TENANT_ID', value: subscription().tenantId }
          ]
          resources: {
            cpu: json('0.25')
            memory: '0.5Gi'
          }
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              initialDelaySeconds: 2
              periodSeconds: 5
              failureThreshold: 10
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 3
            }
            {
              // Ready: the database answers, migrations are current, the job worker runs.
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: 8080
              }
              periodSeconds: 5
              timeoutSeconds: 3
              failureThreshold: 2
            }
          ]
          volumeMounts: [
            {
              volumeName: 'config'
              mountPath: '/etc/twokey'
            }
            {
              volumeName: 'secrets'
              mountPath: secretDir
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
      }
      volumes: [
        {
          name: 'config'
          storageType: 'Secret'
          secrets: [
            {
              secretRef: 'config-toml'
              path: 'config.toml'
            }
          ]
        }
        {
          name: 'secrets'
          storageType: 'Secret'
          secrets: [for s in fileSecrets: {
            secretRef: s
            path: s
          }]
        }
      ]
    }
  }
  dependsOn: [
    // The identity must be able to read the vault before the first revision resolves its
    // Key Vault references; the secrets must exist.
    identityReadsSecrets
    databaseUrlSecret
    oidcSecret
    reviewKeySecret
    smtpSecret
  ]
}

@description('The app\'s own host name (register https://<this>/auth/callback at the issuer unless publicUrl is set).')
output appFqdn string = app.properties.configuration.ingress.fqdn

@description('The URL twokey uses for links and the sign-in redirect.')
output publicUrl string = effectivePublicUrl

@description('Give this principal the Azure roles of README "Setting up Azure" (PIM on each Resource Guard, Reader on the vaults).')
output identityPrincipalId string = identity.properties.principalId

output identityClientId string = identity.properties.clientId

output keyVaultName string = vault.name

output postgresHost string = postgres.properties.fullyQualifiedDomainName
