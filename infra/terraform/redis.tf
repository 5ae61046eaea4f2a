# Azure Cache for Redis, the hot tier: TLS only (port 6380), TLS 1.2 at least.

locals {
  redis_url = var.redis_enabled ? "rediss://:${urlencode(azurerm_redis_cache.main[0].primary_access_key)}@${azurerm_redis_cache.main[0].hostname}:${azurerm_redis_cache.main[0].ssl_port}" : null
}

resource "azurerm_redis_cache" "main" {
  count                = var.redis_enabled ? 1 : 0
  name                 = "redis-${var.name}-${local.suffix}"
  location             = azurerm_resource_group.main.location
  resource_group_name  = azurerm_resource_group.main.name
  sku_name             = var.redis_sku_name
  family               = var.redis_sku_name == "Premium" ? "P" : "C"
  capacity             = var.redis_capacity
  non_ssl_port_enabled = false
  minimum_tls_version  = "1.2"
  tags                 = local.tags
}
