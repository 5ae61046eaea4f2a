terraform {
  required_version = ">= 1.6"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.42 is the first 4.x with azurerm_key_vault's rbac_authorization_enabled (the older
      # enable_rbac_authorization is deprecated and goes away in 5.0).
      version = "~> 4.42"
    }
    # Only for PostgreSQL elastic clusters (Citus): see store_postgresql.tf.
    azapi = {
      source  = "Azure/azapi"
      version = "~> 2.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}
