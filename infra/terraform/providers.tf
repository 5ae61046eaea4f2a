provider "azurerm" {
  features {
    key_vault {
      # Secrets are recreated with the vault on the next apply; a purge keeps a destroy/apply
      # cycle from colliding with soft-deleted secrets of the same names.
      purge_soft_deleted_secrets_on_destroy = true
    }
  }
  subscription_id = var.subscription_id
}

provider "azapi" {
  subscription_id = var.subscription_id
}
