variable "subscription_id" {
  description = "Azure subscription to deploy into. null: the one the Azure CLI (or ARM_SUBSCRIPTION_ID) selects."
  type        = string
  default     = null
}

variable "name" {
  description = "Prefix of every resource name (letters and digits, 3 to 12, lower case): the Key Vault, Redis, PostgreSQL and Cosmos DB names are global, so a random suffix is added to them."
  type        = string
  default     = "hitcount"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,11}$", var.name))
    error_message = "name must be 3 to 12 lower-case letters and digits, starting with a letter."
  }
}

variable "location" {
  description = "Azure region of every resource."
  type        = string
  default     = "westeurope"
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = { app = "hitcount" }
}

variable "store" {
  description = "The aggregators' durable store: \"postgresql\" (Azure Database for PostgreSQL flexible server, optionally an elastic cluster) or \"cosmosdb\" (Azure Cosmos DB for NoSQL)."
  type        = string
  default     = "postgresql"

  validation {
    condition     = contains(["postgresql", "cosmosdb"], var.store)
    error_message = "store must be \"postgresql\" or \"cosmosdb\"."
  }
}

# --- AKS ---

variable "kubernetes_version" {
  description = "AKS Kubernetes version; null: the region's default."
  type        = string
  default     = null
}

variable "aks_node_vm_size" {
  description = "VM size of the AKS system node pool (which also runs hitcount)."
  type        = string
  default     = "Standard_D4ds_v5"
}

variable "aks_node_count" {
  description = "Minimum node count of the pool (the autoscaler keeps it between this and aks_node_max_count). The aggregator PDBs and two colours want at least 2."
  type        = number
  default     = 2

  validation {
    condition     = var.aks_node_count >= 1
    error_message = "aks_node_count must be at least 1."
  }
}

variable "aks_node_max_count" {
  description = "Maximum node count of the pool (cluster autoscaler)."
  type        = number
  default     = 5

  # Checked against aks_node_count by a precondition in main.tf: a validation block may
  # name other variables only from Terraform 1.9.
  validation {
    condition     = var.aks_node_max_count >= 1
    error_message = "aks_node_max_count must be at least 1."
  }
}

variable "log_retention_days" {
  description = "Log Analytics retention in days (30 to 730)."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730
    error_message = "log_retention_days must be between 30 and 730."
  }
}

# --- PostgreSQL (store = "postgresql") ---

variable "postgresql_version" {
  description = "PostgreSQL major version. Elastic clusters need 17 or later."
  type        = string
  default     = "17"

  validation {
    condition     = contains(["16", "17"], var.postgresql_version)
    error_message = "postgresql_version must be \"16\" or \"17\"."
  }
}

variable "postgresql_sku_name" {
  description = "Compute SKU, tier prefix and size as azurerm writes it (B_ = Burstable, GP_ = General Purpose, MO_ = Memory Optimized). Elastic clusters take GP_ or MO_; with an elastic cluster it is each node's size."
  type        = string
  default     = "GP_Standard_D2ds_v5"

  validation {
    condition     = can(regex("^(B|GP|MO)_Standard_", var.postgresql_sku_name))
    error_message = "postgresql_sku_name must look like GP_Standard_D2ds_v5 (B_, GP_ or MO_)."
  }
}

variable "postgresql_storage_mb" {
  description = "Storage per server (per node with an elastic cluster) in MB; it can only grow."
  type        = number
  default     = 65536

  validation {
    condition     = contains([32768, 65536, 131072, 262144, 524288, 1048576, 2097152, 4193280, 4194304, 8388608, 16777216, 33553408], var.postgresql_storage_mb)
    error_message = "postgresql_storage_mb must be one of the sizes Azure offers (32768, 65536, 131072, ...)."
  }
}

variable "postgresql_elastic_cluster_nodes" {
  description = "0: a plain flexible server. 2 to 20: an elastic cluster (Citus) of that many nodes; the node count can only grow. Needs postgresql_version 17 and a GP_ or MO_ SKU."
  type        = number
  default     = 0

  validation {
    condition     = var.postgresql_elastic_cluster_nodes == 0 || (var.postgresql_elastic_cluster_nodes >= 2 && var.postgresql_elastic_cluster_nodes <= 20 && floor(var.postgresql_elastic_cluster_nodes) == var.postgresql_elastic_cluster_nodes)
    error_message = "postgresql_elastic_cluster_nodes must be 0 or a whole number from 2 to 20."
  }
}

variable "postgresql_allowed_ip_ranges" {
  description = "Extra client IP ranges allowed through the PostgreSQL firewall (for the operator's psql, e.g. to run the Citus distribution statements), as { name = { start = \"a.b.c.d\", end = \"a.b.c.d\" } }. Azure services (AKS's egress) are always allowed."
  type = map(object({
    start = string
    end   = string
  }))
  default = {}
}

# --- Cosmos DB (store = "cosmosdb") ---

variable "cosmosdb_consistency_level" {
  description = "Default consistency of the Cosmos DB account. The Redis hot tier on Cosmos DB needs Strong or BoundedStaleness (with Session a rebuild can miss a batch); Session only without Redis."
  type        = string
  default     = "Strong"

  validation {
    condition     = contains(["Strong", "BoundedStaleness", "Session"], var.cosmosdb_consistency_level)
    error_message = "cosmosdb_consistency_level must be Strong, BoundedStaleness or Session."
  }
}

variable "cosmosdb_max_throughput" {
  description = "Autoscale maximum RU/s shared by the hitcount database's containers (1000 or more, a multiple of 1000); autoscale suits the bursty fold."
  type        = number
  default     = 4000

  validation {
    condition     = var.cosmosdb_max_throughput >= 1000 && var.cosmosdb_max_throughput % 1000 == 0
    error_message = "cosmosdb_max_throughput must be a multiple of 1000, at least 1000."
  }
}

# --- Redis ---

variable "redis_enabled" {
  description = "Create Azure Cache for Redis (the hot tier) and the redis-url secret. false: run without Redis (drop redis-url from the azure-keyvault overlay's SecretProviderClass)."
  type        = bool
  default     = true
}

variable "redis_sku_name" {
  description = "Azure Cache for Redis SKU: Basic (no replica, no SLA), Standard or Premium."
  type        = string
  default     = "Standard"

  validation {
    condition     = contains(["Basic", "Standard", "Premium"], var.redis_sku_name)
    error_message = "redis_sku_name must be Basic, Standard or Premium."
  }
}

variable "redis_capacity" {
  description = "Azure Cache for Redis size within the SKU's family (C0 to C6 for Basic/Standard, P1 to P5 for Premium)."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_capacity >= 0 && var.redis_capacity <= 6
    error_message = "redis_capacity must be between 0 and 6."
  }
}

# --- Key Vault / identity ---

variable "kubernetes_namespace" {
  description = "Namespace of the workload identity's service account (infra/k8s/base/namespace.yaml)."
  type        = string
  default     = "hitcount"
}

variable "kubernetes_service_account" {
  description = "Service account the CSI driver reads Key Vault as (infra/k8s/overlays/azure-keyvault/serviceaccount.yaml)."
  type        = string
  default     = "hitcount"
}

variable "edge_id" {
  description = "The edge id every edge pod signs as (HITCOUNT_EDGE_ID in infra/k8s/base/config.env): the edge-keys secret is <edge_id>=<edge key>."
  type        = string
  default     = "k8s-edge"
}

variable "key_vault_purge_protection" {
  description = "Purge protection on the Key Vault: recommended in production, but a purge-protected vault's name stays taken for the retention period after a destroy."
  type        = bool
  default     = false
}
