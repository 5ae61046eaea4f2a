# store = "cosmosdb": an Azure Cosmos DB for NoSQL account, the database hitcount and its three
# containers as the aggregator creates them (aggregator/store/src/cosmos.rs, CosmosStore::connect).
# Created here so the throughput is chosen: autoscale on the database, shared by the containers.

locals {
  cosmosdb = var.store == "cosmosdb"
}

resource "azurerm_cosmosdb_account" "main" {
  count               = local.cosmosdb ? 1 : 0
  name                = "cosmos-${var.name}-${local.suffix}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  offer_type          = "Standard"
  kind                = "GlobalDocumentDB"
  tags                = local.tags

  # The Redis hot tier's rebuild must see every batch written before it began: Strong or
  # BoundedStaleness (README.md, "Azure Cosmos DB for NoSQL").
  consistency_policy {
    consistency_level = var.cosmosdb_consistency_level
    # Only read with BoundedStaleness; these are the service's minimums for one region.
    max_interval_in_seconds = 5
    max_staleness_prefix    = 100
  }

  geo_location {
    location          = azurerm_resource_group.main.location
    failover_priority = 0
  }

  # hitcount signs in with the account key (Entra ID sign-in is not built yet).
  local_authentication_enabled = true
}

resource "azurerm_cosmosdb_sql_database" "hitcount" {
  count               = local.cosmosdb ? 1 : 0
  name                = "hitcount"
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main[0].name

  autoscale_settings {
    max_throughput = var.cosmosdb_max_throughput
  }
}

# Resources, tokens, edge keys, patterns: one partition per kind of document.
resource "azurerm_cosmosdb_sql_container" "catalog" {
  count               = local.cosmosdb ? 1 : 0
  name                = "catalog"
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main[0].name
  database_name       = azurerm_cosmosdb_sql_database.hitcount[0].name
  partition_key_paths = ["/kind"]
}

# Count documents (an hour of minute cells, or one hour or day cell). The cells are read whole,
# never searched, so they are not indexed. Default TTL -1: TTL on, no default, each document
# expiring with its retention.
resource "azurerm_cosmosdb_sql_container" "counts" {
  count               = local.cosmosdb ? 1 : 0
  name                = "counts"
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main[0].name
  database_name       = azurerm_cosmosdb_sql_database.hitcount[0].name
  partition_key_paths = ["/resource_id"]
  default_ttl         = -1

  indexing_policy {
    indexing_mode = "consistent"
    included_path {
      path = "/*"
    }
    excluded_path {
      path = "/cells/*"
    }
  }
}

# Delta batches awaiting the fold, partitioned by edge so every delivery of a batch meets the
# same id; payloads are read whole, never searched. TTL on, no default.
resource "azurerm_cosmosdb_sql_container" "inbox" {
  count               = local.cosmosdb ? 1 : 0
  name                = "inbox"
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main[0].name
  database_name       = azurerm_cosmosdb_sql_database.hitcount[0].name
  partition_key_paths = ["/edge_id"]
  default_ttl         = -1

  indexing_policy {
    indexing_mode = "consistent"
    included_path {
      path = "/*"
    }
    excluded_path {
      path = "/payload/?"
    }
  }
}
