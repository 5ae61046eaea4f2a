# store = "postgresql": Azure Database for PostgreSQL flexible server, either one server or an
# elastic cluster (Citus) of var.postgresql_elastic_cluster_nodes nodes.
#
# Network: public access restricted by the firewall to Azure services (AKS's egress) and
# var.postgresql_allowed_ip_ranges. The "Azure services" rule admits any Azure tenant's
# traffic, the password and TLS being the guard; for private access instead, put the server
# in a delegated subnet of a VNet peered with AKS's (delegated_subnet_id and
# private_dns_zone_id; public_network_access_enabled = false) and drop the firewall rules.

locals {
  postgresql = var.store == "postgresql"
  pg_elastic = local.postgresql && var.postgresql_elastic_cluster_nodes > 0
  pg_plain   = local.postgresql && !local.pg_elastic

  pg_admin = "hitcount"
  # GP_Standard_D2ds_v5 -> tier GeneralPurpose, name Standard_D2ds_v5 (the ARM API's form).
  pg_sku_tiers = { B = "Burstable", GP = "GeneralPurpose", MO = "MemoryOptimized" }
  pg_sku_tier  = local.pg_sku_tiers[split("_", var.postgresql_sku_name)[0]]
  pg_sku_name  = join("_", slice(split("_", var.postgresql_sku_name), 1, length(split("_", var.postgresql_sku_name))))

  pg_server_id = local.pg_plain ? azurerm_postgresql_flexible_server.main[0].id : (
    local.pg_elastic ? azapi_resource.postgresql_elastic[0].id : null
  )
  pg_fqdn = local.pg_plain ? azurerm_postgresql_flexible_server.main[0].fqdn : (
    local.pg_elastic ? azapi_resource.postgresql_elastic[0].output.properties.fullyQualifiedDomainName : null
  )
  # Port 5432 reaches the coordinator of an elastic cluster: hitcount's advisory locks need
  # every aggregator on the coordinator (7432 would balance across nodes).
  database_url = local.postgresql ? "postgres://${local.pg_admin}:${random_password.postgresql[0].result}@${local.pg_fqdn}:5432/hitcount?sslmode=verify-full" : null
}

# Letters and digits only, so the password needs no escaping in database-url.
resource "random_password" "postgresql" {
  count       = local.postgresql ? 1 : 0
  length      = 32
  special     = false
  min_upper   = 1
  min_lower   = 1
  min_numeric = 1
}

resource "azurerm_postgresql_flexible_server" "main" {
  count                         = local.pg_plain ? 1 : 0
  name                          = "psql-${var.name}-${local.suffix}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  version                       = var.postgresql_version
  sku_name                      = var.postgresql_sku_name
  storage_mb                    = var.postgresql_storage_mb
  auto_grow_enabled             = true
  administrator_login           = local.pg_admin
  administrator_password        = random_password.postgresql[0].result
  public_network_access_enabled = true
  backup_retention_days         = 7
  tags                          = local.tags

  lifecycle {
    # Azure picks the zone (and moves it on failover).
    ignore_changes = [zone, high_availability[0].standby_availability_zone]
  }
}

resource "azurerm_postgresql_flexible_server_database" "hitcount" {
  count     = local.pg_plain ? 1 : 0
  name      = "hitcount"
  server_id = azurerm_postgresql_flexible_server.main[0].id
  charset   = "UTF8"
  collation = "en_US.utf8"
}

# Elastic clusters are created with azapi: azurerm 4.x's azurerm_postgresql_flexible_server had
# no `cluster` block until a late 4.x release (hashicorp/terraform-provider-azurerm#31315), so
# the ARM resource is used directly. Citus needs no server parameter here: the service loads it
# and creates the extension in the cluster's default database, which is named hitcount at
# creation (it cannot be renamed later). The tables are distributed by hand once the first
# migration has run (README.md, "Elastic cluster (Citus)").
resource "azapi_resource" "postgresql_elastic" {
  count     = local.pg_elastic ? 1 : 0
  type      = "Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01"
  name      = "psql-${var.name}-${local.suffix}"
  parent_id = azurerm_resource_group.main.id
  location  = azurerm_resource_group.main.location
  tags      = local.tags

  body = {
    sku = {
      name = local.pg_sku_name
      tier = local.pg_sku_tier
    }
    properties = {
      version                    = var.postgresql_version
      administratorLogin         = local.pg_admin
      administratorLoginPassword = random_password.postgresql[0].result
      storage = {
        storageSizeGB = floor(var.postgresql_storage_mb / 1024)
        autoGrow      = "Enabled"
      }
      backup = {
        backupRetentionDays = 7
        geoRedundantBackup  = "Disabled"
      }
      network = {
        publicNetworkAccess = "Enabled"
      }
      cluster = {
        clusterSize         = var.postgresql_elastic_cluster_nodes
        defaultDatabaseName = "hitcount"
      }
    }
  }

  # administratorLoginPassword never comes back from a read; azapi's ignore_missing_property
  # (on by default) keeps that from showing as a diff.
  response_export_values = ["properties.fullyQualifiedDomainName"]

  lifecycle {
    precondition {
      condition     = tonumber(var.postgresql_version) >= 17 && local.pg_sku_tier != "Burstable"
      error_message = "An elastic cluster needs postgresql_version 17 or later and a GP_ or MO_ SKU."
    }
  }
}

# 0.0.0.0 to 0.0.0.0 is Azure's "allow public access from Azure services" rule.
resource "azurerm_postgresql_flexible_server_firewall_rule" "azure_services" {
  count            = local.postgresql ? 1 : 0
  name             = "allow-azure-services"
  server_id        = local.pg_server_id
  start_ip_address = "0.0.0.0"
  end_ip_address   = "0.0.0.0"
}

resource "azurerm_postgresql_flexible_server_firewall_rule" "operators" {
  for_each         = local.postgresql ? var.postgresql_allowed_ip_ranges : {}
  name             = each.key
  server_id        = local.pg_server_id
  start_ip_address = each.value.start
  end_ip_address   = each.value.end
}
