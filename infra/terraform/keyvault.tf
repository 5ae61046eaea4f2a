# Key Vault (RBAC authorization) with the secrets infra/k8s/overlays/azure-keyvault syncs into
# the Secret hitcount-secrets, and the workload identity the CSI driver reads them as.

resource "azurerm_key_vault" "main" {
  name                       = "kv-${var.name}-${local.suffix}"
  location                   = azurerm_resource_group.main.location
  resource_group_name        = azurerm_resource_group.main.name
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  rbac_authorization_enabled = true
  purge_protection_enabled   = var.key_vault_purge_protection
  soft_delete_retention_days = 7
  tags                       = local.tags
}

# Whoever runs Terraform writes the secrets. Role assignments take up to a few minutes to
# apply: a first apply can fail on the secrets with 403 and succeed when run again.
resource "azurerm_role_assignment" "deployer_secrets_officer" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "random_password" "admin_token" {
  length  = 48
  special = false
}

resource "random_password" "visitor_secret" {
  length  = 48
  special = false
}

resource "random_password" "edge_key" {
  length  = 48
  special = false
}

# The aggregators' --secret-key-file: 32 random bytes, stored in base64 as the file holds them.
resource "random_bytes" "secret_key" {
  length = 32
}

locals {
  # Key Vault secret names = the keys of hitcount-secrets (infra/k8s/README.md, "Secrets").
  # Listed apart from the values so for_each is known at plan time and not sensitive.
  secret_names = concat(
    ["admin-token", "visitor-secret", "edge-key", "edge-keys", "secret-key"],
    local.postgresql ? ["database-url"] : [],
    local.cosmosdb ? ["cosmos-key"] : [],
    var.redis_enabled ? ["redis-url"] : [],
  )
  secret_values = {
    "admin-token"    = random_password.admin_token.result
    "visitor-secret" = random_password.visitor_secret.result
    "edge-key"       = random_password.edge_key.result
    "edge-keys"      = "${var.edge_id}=${random_password.edge_key.result}"
    "secret-key"     = random_bytes.secret_key.base64
    "database-url"   = local.database_url
    "cosmos-key"     = local.cosmosdb ? azurerm_cosmosdb_account.main[0].primary_key : null
    "redis-url"      = local.redis_url
  }
}

resource "azurerm_key_vault_secret" "hitcount" {
  for_each     = toset(local.secret_names)
  name         = each.key
  value        = local.secret_values[each.key]
  key_vault_id = azurerm_key_vault.main.id

  depends_on = [azurerm_role_assignment.deployer_secrets_officer]
}

# The identity of system:serviceaccount:hitcount:hitcount (serviceaccount.yaml's client id).
resource "azurerm_user_assigned_identity" "hitcount" {
  name                = "id-${var.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_federated_identity_credential" "hitcount" {
  name                = "aks-${var.kubernetes_namespace}-${var.kubernetes_service_account}"
  resource_group_name = azurerm_resource_group.main.name
  parent_id           = azurerm_user_assigned_identity.hitcount.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject             = "system:serviceaccount:${var.kubernetes_namespace}:${var.kubernetes_service_account}"
}

# Read-only access to the secrets' values, nothing else.
resource "azurerm_role_assignment" "hitcount_secrets_user" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.hitcount.principal_id
}
