// bench: Vulkan's C++ header, plus what older headers lack that ggml-vulkan names.
//
// Debian 12's headers (1.3.239) predate VK_EXT_layer_settings (1.3.261). ggml-vulkan chains a
// vk::LayerSettingsCreateInfoEXT into its instance whether or not it asks for the validation layer,
// so without these types it does not compile. The definitions below follow the extension's
// registry entry (same members, same order, same structure type), so the chained struct is the
// one newer headers would build; a driver that does not know it skips it, as with newer headers.
// With headers that have the extension this file adds nothing. bench uses it only when the
// installed headers lack the extension: through an overlay folder in its cache (this file beside
// links to the real headers), given to ggml-vulkan's build as its Vulkan_INCLUDE_DIR.
#pragma once
#include_next <vulkan/vulkan.hpp>

#ifndef VK_EXT_layer_settings
#include <cstdint>
#include <vector>

namespace vk {

enum class LayerSettingTypeEXT : uint32_t {
    eBool32 = 0, eInt32 = 1, eInt64 = 2, eUint32 = 3, eUint64 = 4, eFloat32 = 5, eFloat64 = 6, eString = 7,
};

struct LayerSettingEXT {
    const char * pLayerName;
    const char * pSettingName;
    LayerSettingTypeEXT type;
    uint32_t valueCount;
    const void * pValues;
};

struct LayerSettingsCreateInfoEXT {
    StructureType sType = static_cast<StructureType>(1000496000);  // VK_STRUCTURE_TYPE_LAYER_SETTINGS_CREATE_INFO_EXT
    const void * pNext = nullptr;
    uint32_t settingCount = 0;
    const LayerSettingEXT * pSettings = nullptr;

    explicit LayerSettingsCreateInfoEXT(const std::vector<LayerSettingEXT> & settings)
        : settingCount(static_cast<uint32_t>(settings.size())), pSettings(settings.data()) {}
};

}  // namespace vk
#endif
