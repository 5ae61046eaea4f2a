data "azurerm_client_config" "current" {}

# Key Vault, Redis, PostgreSQL and Cosmos DB names are global DNS names.
resource "random_string" "suffix" {
  length  = 6
  special = false
  upper   = false
}

locals {
  suffix = random_string.suffix.result
  tags   = var.tags
}

resource "azurerm_resource_group" "main" {
  name     = "rg-${var.name}"
  location = var.location
  tags     = local.tags
}

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${var.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_kubernetes_cluster" "main" {
  name                = "aks-${var.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  dns_prefix          = var.name
  kubernetes_version  = var.kubernetes_version
  tags                = local.tags

  # Workload identity: the Secrets Store CSI driver reads Key Vault as the managed identity
  # federated with the hitcount service account (keyvault.tf).
  oidc_issuer_enabled       = true
  workload_identity_enabled = true

  default_node_pool {
    name                 = "system"
    vm_size              = var.aks_node_vm_size
    auto_scaling_enabled = true
    min_count            = var.aks_node_count
    max_count            = var.aks_node_max_count
    # Set explicitly: the service fills in a default that azurerm would otherwise show as a diff.
    upgrade_settings {
      max_surge = "33%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  # infra/k8s/base/networkpolicies.yaml needs a CNI that enforces NetworkPolicy.
  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
    network_data_plane  = "cilium"
    network_policy      = "cilium"
  }

  # Container Insights to the Log Analytics workspace, authenticated with managed identity.
  oms_agent {
    log_analytics_workspace_id      = azurerm_log_analytics_workspace.main.id
    msi_auth_for_monitoring_enabled = true
  }

  # Installs the Secrets Store CSI driver and its Azure provider, which the
  # infra/k8s/overlays/azure-keyvault overlay expects.
  key_vault_secrets_provider {
    secret_rotation_enabled = true
  }

  lifecycle {
    precondition {
      condition     = var.aks_node_max_count >= var.aks_node_count
      error_message = "aks_node_max_count must be at least aks_node_count."
    }
  }
}
