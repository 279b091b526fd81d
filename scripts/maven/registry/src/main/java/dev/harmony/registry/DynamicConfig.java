package dev.harmony.registry;

import java.util.List;

import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;

/**
 * The list of settings an operator may change at run time, which Apicurio's config-index
 * extension generates at build time. That extension's build-time half is not on Maven Central,
 * so the registry built here offers none (every setting is fixed at start).
 */
@ApplicationScoped
public class DynamicConfig {
    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList dynamicConfigProperties() {
        return new DynamicConfigPropertyList(List.of());
    }
}
