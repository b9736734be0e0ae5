// Package controllers holds the FalCredential reconciler and the pod-injection
// webhook of the falguard manager.
package controllers
