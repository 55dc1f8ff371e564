// Example parameters for main.bicep. Secrets are read from the environment of the shell that
// deploys, never written here:
//
//   export PG_ADMIN_PASSWORD="$(openssl rand -base64 32)"
//   export OIDC_CLIENT_SECRET='<the app registration's client secret>'
//   export REVIEW_KEY="$(openssl rand -base64 48)"
//   export SMTP_URL='smtp://twokey%40contoso.com:<app password>@smtp.office365.com:587?tls=required'
//   az deployment group create -g rg-twokey -f deploy/azure/main.bicep -p deploy/azure/main.bicepparam
using 'main.bicep'

param name = 'twokey'
param image = 'myregistry.azurecr.io/twokey:0.1.0'
param registryServer = 'myregistry.azurecr.io'
param configToml = loadTextContent('config.toml')
// param publicUrl = 'https://twokey.contoso.com'
param minReplicas = 2
param maxReplicas = 4
param zoneRedundant = false
// Zone-redundant PostgreSQL needs a larger tier, e.g.:
// param postgresSkuName = 'Standard_D2ds_v5'
// param postgresSkuTier = 'GeneralPurpose'
param postgresAdminPassword = readEnvironmentVariable('PG_ADMIN_PASSWORD')
param oidcClientSecret = readEnvironmentVariable('OIDC_CLIENT_SECRET')
param reviewKey = readEnvironmentVariable('REVIEW_KEY')
param smtpUrl = readEnvironmentVariable('SMTP_URL')
