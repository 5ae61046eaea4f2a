output "resource_group_name" {
  description = "The resource group holding everything."
  value       = azurerm_resource_group.main.name
}

output "aks_name" {
  description = "The AKS cluster's name."
  value       = azurerm_kubernetes_cluster.main.name
}

output "kube_config_command" {
  description = "Merges the cluster's credentials into ~/.kube/config (needs the Azure CLI, signed in)."
  value       = "az aks get-credentials --resource-group ${azurerm_resource_group.main.name} --name ${azurerm_kubernetes_cluster.main.name}"
}

output "log_analytics_workspace_id" {
  description = "The Log Analytics workspace Container Insights writes to."
  value       = azurerm_log_analytics_workspace.main.id
}

output "key_vault_name" {
  description = "The Key Vault: keyvaultName in infra/k8s/overlays/azure-keyvault/secretproviderclass.yaml."
  value       = azurerm_key_vault.main.name
}

output "key_vault_uri" {
  description = "The Key Vault's URI."
  value       = azurerm_key_vault.main.vault_uri
}

output "workload_identity_client_id" {
  description = "The managed identity's client id: clientID in secretproviderclass.yaml and azure.workload.identity/client-id in serviceaccount.yaml."
  value       = azurerm_user_assigned_identity.hitcount.client_id
}

output "tenant_id" {
  description = "The Entra ID tenant: tenantId in secretproviderclass.yaml."
  value       = data.azurerm_client_config.current.tenant_id
}

output "store" {
  description = "The durable store chosen: postgresql or cosmosdb."
  value       = var.store
}

output "postgresql_fqdn" {
  description = "The PostgreSQL server's host name (an elastic cluster's coordinator on port 5432); null with Cosmos DB."
  value       = local.pg_fqdn
}

output "database_url" {
  description = "HITCOUNT_DATABASE_URL (also the Key Vault secret database-url); null with Cosmos DB."
  value       = local.database_url
  sensitive   = true
}

output "cosmosdb_endpoint" {
  description = "HITCOUNT_COSMOS_ENDPOINT for infra/k8s/base/config.env; null with PostgreSQL."
  value       = local.cosmosdb ? azurerm_cosmosdb_account.main[0].endpoint : null
}

output "cosmosdb_database" {
  description = "HITCOUNT_COSMOS_DATABASE; null with PostgreSQL."
  value       = local.cosmosdb ? azurerm_cosmosdb_sql_database.hitcount[0].name : null
}

output "redis_hostname" {
  description = "The Azure Cache for Redis host (TLS on port 6380); null without Redis."
  value       = var.redis_enabled ? azurerm_redis_cache.main[0].hostname : null
}

output "redis_url" {
  description = "HITCOUNT_REDIS_URL, rediss:// with the access key (also the Key Vault secret redis-url); null without Redis."
  value       = local.redis_url
  sensitive   = true
}
