<#
.SYNOPSIS
    Guest-side helpers for kepoch A/B runs on real Windows guests.

.DESCRIPTION
    Import this module in an elevated Windows PowerShell 5.1 or PowerShell 7 session inside the guest:

        Import-Module C:\kepoch\scripts\KepochGuest.psm1
        Install-KepochDriver -PackagePath C:\kepoch\package
        Invoke-KepochAB -Rounds 6 -OutputPath C:\kepoch\results

    It installs/uninstalls the kepoch driver package (kepoch.sys, kepoch.inf, kepochctl.exe and the test
    certificate kepoch-test.cer, as test-scripts/package.sh builds it), sets the
    registry values under HKLM\SYSTEM\CurrentControlSet\Services\kepoch\Parameters, restarts the driver,
    reports the processor topology (maximum/active per group, whether the OS supports processor hot-add),
    drives the built-in load generator through kepochctl.exe and writes one JSON file per round in the
    schema that `kepoch-sim report` reads (the kepoch-report schema) with the guest's facts merged in.

.NOTES
    Functions that change the system support -WhatIf and -Confirm.
#>

Set-StrictMode -Version Latest

$script:ServiceName = 'kepoch'
$script:ParametersKey = 'HKLM:\SYSTEM\CurrentControlSet\Services\kepoch\Parameters'
$script:ToolDirectory = Join-Path $env:ProgramFiles 'kepoch'
$script:StateKey = 'HKLM:\SOFTWARE\kepoch'
$script:StrategyNames = @('lazy', 'callback', 'eager')

<#
.SYNOPSIS
    Throws unless the current process runs elevated (as an administrator).
#>
function Assert-KepochAdministrator {
    [CmdletBinding()]
    param()
    $identity = [System.Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object System.Security.Principal.WindowsPrincipal($identity)
    if (-not $principal.IsInRole([System.Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'kepoch: this command needs an elevated PowerShell (Run as administrator).'
    }
}

<#
.SYNOPSIS
    Converts a strategy name or number (lazy/0, callback/1, eager/2) to its registry value.
.PARAMETER Strategy
    The strategy name or number.
#>
function ConvertTo-KepochStrategyValue {
    [CmdletBinding()]
    [OutputType([int])]
    param([Parameter(Mandatory = $true)] [string] $Strategy)
    $index = [array]::IndexOf($script:StrategyNames, $Strategy.ToLowerInvariant())
    if ($index -ge 0) { return $index }
    $number = 0
    if ([int]::TryParse($Strategy, [ref] $number) -and $number -ge 0 -and $number -le 2) { return $number }
    throw "kepoch: unknown strategy '$Strategy'. Use lazy (0), callback (1) or eager (2)."
}

<#
.SYNOPSIS
    Returns the boot configuration of the current boot entry as a name -> value hashtable.
.DESCRIPTION
    Parses `bcdedit /enum {current}`. Element names (testsigning, maxproc, groupsize, ...) are not
    localized; values such as Yes/No may be.
#>
function Get-KepochBootConfiguration {
    [CmdletBinding()]
    [OutputType([hashtable])]
    param()
    $lines = & bcdedit.exe /enum '{current}' 2>&1
    if ($LASTEXITCODE -ne 0) {
        throw "kepoch: 'bcdedit /enum {current}' failed ($LASTEXITCODE): $($lines -join ' ')"
    }
    $config = @{}
    foreach ($line in $lines) {
        if ("$line" -match '^\s*([A-Za-z][A-Za-z0-9]*)\s+(.+?)\s*$') {
            $config[$Matches[1].ToLowerInvariant()] = $Matches[2]
        }
    }
    return $config
}

<#
.SYNOPSIS
    Reports whether test signing is configured (bcdedit) and active in the running boot.
.DESCRIPTION
    ConfiguredInBcd comes from `bcdedit /enum {current}` (testsigning Yes), which takes effect at the
    next boot. ActiveThisBoot comes from the kernel's start options of the running boot
    (HKLM\SYSTEM\CurrentControlSet\Control\SystemStartOptions contains TESTSIGNING), which is what
    decides whether a test-signed kepoch.sys can load now.
#>
function Get-KepochTestSigning {
    [CmdletBinding()]
    param()
    $bcd = Get-KepochBootConfiguration
    $configured = $false
    if ($bcd.ContainsKey('testsigning')) { $configured = $bcd['testsigning'] -match '^(yes|on|true|1)$' }
    $options = (Get-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Control' -Name SystemStartOptions).SystemStartOptions
    [pscustomobject]@{
        ConfiguredInBcd = [bool] $configured
        ActiveThisBoot  = [bool] ($options -match '\bTESTSIGNING\b')
        StartOptions    = "$options".Trim()
    }
}

<#
.SYNOPSIS
    Returns the path of kepochctl.exe.
.DESCRIPTION
    Looks at $env:KEPOCHCTL, then the directory Install-KepochDriver copies the tool to
    ($env:ProgramFiles\kepoch), then PATH.
#>
function Get-KepochCtlPath {
    [CmdletBinding()]
    [OutputType([string])]
    param()
    if ($env:KEPOCHCTL -and (Test-Path -LiteralPath $env:KEPOCHCTL)) { return $env:KEPOCHCTL }
    $installed = Join-Path $script:ToolDirectory 'kepochctl.exe'
    if (Test-Path -LiteralPath $installed) { return $installed }
    $command = Get-Command -Name 'kepochctl.exe' -CommandType Application -ErrorAction SilentlyContinue |
        Select-Object -First 1
    if ($command) { return $command.Source }
    throw "kepoch: kepochctl.exe not found (set `$env:KEPOCHCTL, run Install-KepochDriver, or add it to PATH)."
}

<#
.SYNOPSIS
    Runs kepochctl.exe with the given arguments and returns its standard output; throws on failure.
.PARAMETER ArgumentList
    Arguments for kepochctl.exe, for example 'stats', '--json'.
#>
function Invoke-KepochCtl {
    [CmdletBinding()]
    param([Parameter(Mandatory = $true)] [string[]] $ArgumentList)
    $exe = Get-KepochCtlPath
    $output = & $exe @ArgumentList 2>&1
    $code = $LASTEXITCODE
    $text = ($output | ForEach-Object { "$_" }) -join [Environment]::NewLine
    if ($code -ne 0) {
        throw "kepoch: 'kepochctl $($ArgumentList -join ' ')' failed with exit code ${code}: $text"
    }
    return $text
}

<#
.SYNOPSIS
    Adds a certificate to LocalMachine stores and records what it added, so that uninstall removes it.
.DESCRIPTION
    Each store in -StoreName that does not hold the certificate yet gets it; those additions are recorded
    in HKLM:\SOFTWARE\kepoch (AddedCertificates, "Store:Thumbprint" lines). Certificates that were already
    there are left alone and not recorded.
.PARAMETER Certificate
    The certificate (X509Certificate2).
.PARAMETER StoreName
    LocalMachine store names, for example Root and TrustedPublisher.
#>
function Add-KepochCertificate {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)] [System.Security.Cryptography.X509Certificates.X509Certificate2] $Certificate,
        [Parameter(Mandatory = $true)] [string[]] $StoreName
    )
    $added = @(Get-KepochAddedCertificate)
    foreach ($name in $StoreName) {
        $store = New-Object System.Security.Cryptography.X509Certificates.X509Store($name, 'LocalMachine')
        $store.Open('ReadWrite')
        try {
            if ($store.Certificates.Find('FindByThumbprint', $Certificate.Thumbprint, $false).Count -eq 0) {
                $store.Add($Certificate)
                $added += "${name}:$($Certificate.Thumbprint)"
            }
        } finally { $store.Close() }
    }
    if (-not (Test-Path -LiteralPath $script:StateKey)) { New-Item -Path $script:StateKey -Force | Out-Null }
    New-ItemProperty -LiteralPath $script:StateKey -Name 'AddedCertificates' -PropertyType MultiString `
        -Value ([string[]] ($added | Select-Object -Unique)) -Force | Out-Null
}

<#
.SYNOPSIS
    Returns the "Store:Thumbprint" certificates kepoch's install added to LocalMachine stores.
#>
function Get-KepochAddedCertificate {
    [CmdletBinding()]
    [OutputType([string[]])]
    param()
    if (-not (Test-Path -LiteralPath $script:StateKey)) { return @() }
    $value = (Get-Item -LiteralPath $script:StateKey).GetValue('AddedCertificates', $null)
    if ($null -eq $value) { return @() }
    return @($value)
}

<#
.SYNOPSIS
    Removes the certificates recorded by Add-KepochCertificate (and their keys, for the catalog signer).
#>
function Remove-KepochAddedCertificate {
    [CmdletBinding()]
    param()
    foreach ($entry in @(Get-KepochAddedCertificate)) {
        $name, $thumbprint = $entry -split ':', 2
        $path = "Cert:\LocalMachine\$name\$thumbprint"
        if (Test-Path -LiteralPath $path) {
            if ($name -eq 'My') { Remove-Item -LiteralPath $path -DeleteKey -Force }
            else { Remove-Item -LiteralPath $path -Force }
        }
    }
    if (Test-Path -LiteralPath $script:StateKey) { Remove-Item -LiteralPath $script:StateKey -Recurse -Force }
}

<#
.SYNOPSIS
    Finds Inf2Cat.exe and signtool.exe (Windows Driver Kit / SDK), or returns $null.
#>
function Get-KepochCatalogTool {
    [CmdletBinding()]
    param()
    $find = {
        param([string] $name)
        $command = Get-Command -Name $name -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
        if ($command) { return $command.Source }
        $kits = Join-Path ${env:ProgramFiles(x86)} 'Windows Kits\10\bin'
        if (Test-Path -LiteralPath $kits) {
            $hit = Get-ChildItem -LiteralPath $kits -Recurse -Filter $name -ErrorAction SilentlyContinue |
                Where-Object { $_.FullName -match '\\(x86|x64)\\' } | Sort-Object FullName -Descending | Select-Object -First 1
            if ($hit) { return $hit.FullName }
        }
        return $null
    }
    $inf2cat = & $find 'Inf2Cat.exe'
    $signtool = & $find 'signtool.exe'
    if (-not $inf2cat -or -not $signtool) { return $null }
    [pscustomobject]@{ Inf2Cat = $inf2cat; SignTool = $signtool }
}

<#
.SYNOPSIS
    Creates and signs kepoch.cat for a staged copy of the package (Inf2Cat, signtool).
.DESCRIPTION
    The catalog can only be made on Windows (Inf2Cat), and signing it needs a private key, which the
    Linux-built package does not carry. So this creates a guest-local self-signed code-signing
    certificate (LocalMachine\My), trusts it in Root and TrustedPublisher (recorded, removed by
    Uninstall-KepochDriver), and signs the catalog with it. Targets: Windows 8 / Server 2012 and later, x64.
.PARAMETER StagingPath
    Folder with kepoch.inf, kepoch.sys (the catalog is written there).
.PARAMETER Tool
    The result of Get-KepochCatalogTool.
#>
function New-KepochCatalog {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)] [string] $StagingPath,
        [Parameter(Mandatory = $true)] $Tool
    )
    $out = & $Tool.Inf2Cat "/driver:$StagingPath" '/os:8_X64,Server8_X64,10_X64,Server10_X64' 2>&1
    if ($LASTEXITCODE -ne 0 -or -not (Test-Path -LiteralPath (Join-Path $StagingPath 'kepoch.cat'))) {
        throw "kepoch: Inf2Cat failed ($LASTEXITCODE): $($out -join ' ')"
    }
    $signer = New-SelfSignedCertificate -Type CodeSigningCert -Subject 'CN=kepoch catalog test signing (this guest)' `
        -CertStoreLocation 'Cert:\LocalMachine\My' -KeyExportPolicy NonExportable -NotAfter (Get-Date).AddYears(1)
    $mine = @(Get-KepochAddedCertificate) + "My:$($signer.Thumbprint)"
    if (-not (Test-Path -LiteralPath $script:StateKey)) { New-Item -Path $script:StateKey -Force | Out-Null }
    New-ItemProperty -LiteralPath $script:StateKey -Name 'AddedCertificates' -PropertyType MultiString -Value ([string[]] $mine) -Force | Out-Null
    $public = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2(, $signer.RawData)
    Add-KepochCertificate -Certificate $public -StoreName @('Root', 'TrustedPublisher')
    $out = & $Tool.SignTool sign /sm /s My /sha1 $signer.Thumbprint /fd SHA256 (Join-Path $StagingPath 'kepoch.cat') 2>&1
    if ($LASTEXITCODE -ne 0) { throw "kepoch: signtool could not sign kepoch.cat ($LASTEXITCODE): $($out -join ' ')" }
}

<#
.SYNOPSIS
    Installs the kepoch driver package (kepoch.sys, kepoch.inf, kepochctl.exe, kepoch-test.cer).
.DESCRIPTION
    1. Imports the package's test certificate (kepoch-test.cer, made by test-scripts/package.sh) into the
       Trusted Root Certification Authorities and Trusted Publishers stores of the local machine,
       recording what it added (Uninstall-KepochDriver removes exactly that).
    2. Checks that test signing is active in the running boot (unless -SkipTestSigningCheck) and that
       kepoch.sys carries a signature (Get-AuthenticodeSignature).
    3. Installs. -Method Inf stages the INF with `pnputil /add-driver kepoch.inf /install`, which needs a
       signed catalog: the package built on Linux has none (Inf2Cat exists only on Windows), so this
       method first makes and signs kepoch.cat in the guest (New-KepochCatalog) and needs Inf2Cat.exe and
       signtool.exe (WDK). -Method Service copies kepoch.sys to %SystemRoot%\System32\drivers and creates
       the non-PnP kernel service with sc.exe: no catalog is involved, because the kernel checks only the
       embedded signature of kepoch.sys, which test signing accepts. -Method Auto (default) uses Inf when
       the WDK tools are there and Service otherwise, and says which.
    4. Starts the service and checks it runs (unless -NoStart); Win32 error 577 means the signature is
       not accepted (test signing off, or an unsigned image).
    kepochctl.exe is copied to $env:ProgramFiles\kepoch.
.PARAMETER PackagePath
    Folder holding kepoch.sys, kepoch.inf, kepochctl.exe and (normally) kepoch-test.cer.
.PARAMETER Method
    Auto, Inf or Service.
.PARAMETER SkipTestSigningCheck
    Install even if test signing is off (the driver will then fail to load unless it is production-signed).
.PARAMETER NoStart
    Do not start the service after installing it.
.EXAMPLE
    Install-KepochDriver -PackagePath C:\kepoch\package -WhatIf
#>
function Install-KepochDriver {
    [CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
    param(
        [Parameter(Mandatory = $true)] [string] $PackagePath,
        [ValidateSet('Auto', 'Inf', 'Service')] [string] $Method = 'Auto',
        [switch] $SkipTestSigningCheck,
        [switch] $NoStart
    )
    Assert-KepochAdministrator
    $package = (Resolve-Path -LiteralPath $PackagePath -ErrorAction Stop).ProviderPath
    foreach ($name in @('kepoch.sys', 'kepoch.inf', 'kepochctl.exe')) {
        if (-not (Test-Path -LiteralPath (Join-Path $package $name))) {
            throw "kepoch: '$name' is missing from the package folder '$package'."
        }
    }
    if (-not $SkipTestSigningCheck) {
        $signing = Get-KepochTestSigning
        if (-not $signing.ActiveThisBoot) {
            $hint = 'Run: bcdedit /set {current} testsigning on   (Secure Boot must be off), then reboot.'
            if ($signing.ConfiguredInBcd) { $hint = 'testsigning is set in the BCD but not active yet: reboot.' }
            throw "kepoch: test signing is not active in this boot, so a test-signed kepoch.sys cannot load. $hint"
        }
    }
    $tool = $null
    $reason = 'requested'
    if ($Method -ne 'Service') {
        $tool = Get-KepochCatalogTool
        if (-not $tool) {
            if ($Method -eq 'Inf') {
                throw 'kepoch: -Method Inf needs Inf2Cat.exe and signtool.exe (Windows Driver Kit) to make and sign kepoch.cat in this guest.'
            }
            $reason = 'no Inf2Cat/signtool here, so no catalog: the non-PnP service, whose kepoch.sys signature the kernel checks'
            $Method = 'Service'
        } else {
            $reason = 'Inf2Cat and signtool found: kepoch.cat made and signed in this guest, staged with pnputil'
            $Method = 'Inf'
        }
    } else {
        $reason = 'requested: the non-PnP service, no catalog'
    }
    if (-not $PSCmdlet.ShouldProcess("service '$script:ServiceName' from $package", "Install kepoch driver ($Method)")) {
        return
    }

    $cer = Join-Path $package 'kepoch-test.cer'
    if (Test-Path -LiteralPath $cer) {
        $certificate = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2($cer)
        Add-KepochCertificate -Certificate $certificate -StoreName @('Root', 'TrustedPublisher')
    } else {
        Write-Warning "kepoch: no kepoch-test.cer in '$package': the signer of kepoch.sys must already be trusted."
    }
    $signature = Get-AuthenticodeSignature -FilePath (Join-Path $package 'kepoch.sys')
    if ($signature.Status -eq 'NotSigned') {
        throw "kepoch: kepoch.sys is not signed; build the package with test-scripts/package.sh."
    }
    if ($signature.Status -ne 'Valid') {
        Write-Warning "kepoch: kepoch.sys signature status is $($signature.Status): $($signature.StatusMessage)"
    }

    if (-not (Test-Path -LiteralPath $script:ToolDirectory)) {
        New-Item -ItemType Directory -Path $script:ToolDirectory -Force | Out-Null
    }
    Copy-Item -LiteralPath (Join-Path $package 'kepochctl.exe') -Destination $script:ToolDirectory -Force

    if ($Method -eq 'Inf') {
        $staging = Join-Path $env:TEMP 'kepoch-package'
        if (Test-Path -LiteralPath $staging) { Remove-Item -LiteralPath $staging -Recurse -Force }
        New-Item -ItemType Directory -Path $staging -Force | Out-Null
        Copy-Item -LiteralPath (Join-Path $package 'kepoch.sys'), (Join-Path $package 'kepoch.inf') -Destination $staging
        New-KepochCatalog -StagingPath $staging -Tool $tool
        $out = & pnputil.exe /add-driver (Join-Path $staging 'kepoch.inf') /install 2>&1
        $code = $LASTEXITCODE
        if (-not (Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue)) {
            throw "kepoch: pnputil /add-driver failed or created no '$script:ServiceName' service (exit $code): $($out -join ' ')"
        }
    } else {
        $target = Join-Path $env:SystemRoot 'System32\drivers\kepoch.sys'
        Copy-Item -LiteralPath (Join-Path $package 'kepoch.sys') -Destination $target -Force
        $out = & sc.exe create $script:ServiceName type= kernel start= demand error= normal binPath= 'System32\drivers\kepoch.sys' DisplayName= 'kepoch epoch reclamation' 2>&1
        if ($LASTEXITCODE -ne 0 -and $LASTEXITCODE -ne 1073) {
            throw "kepoch: sc.exe create failed ($LASTEXITCODE): $($out -join ' ')"
        }
        if (-not (Test-Path -LiteralPath $script:ParametersKey)) {
            New-Item -Path $script:ParametersKey -Force | Out-Null
        }
    }
    Write-Host "kepoch: installed with method ${Method}: $reason"
    if (-not $NoStart) {
        $start = Restart-KepochDriver -Confirm:$false
        if (-not $start.Started) {
            $hint = ''
            if ($start.ErrorCode -eq 577) { $hint = ' (577: Windows cannot verify the signature: is test signing on and kepoch.sys signed?)' }
            throw "kepoch: installed, but the driver did not start (error $($start.ErrorCode))${hint}: $($start.Message)"
        }
    }
    Get-Service -Name $script:ServiceName
}

<#
.SYNOPSIS
    Stops and removes the kepoch driver, its driver-store package, kepochctl.exe and the certificates
    its install added.
.PARAMETER KeepTool
    Leave kepochctl.exe in $env:ProgramFiles\kepoch.
.EXAMPLE
    Uninstall-KepochDriver -Confirm:$false
#>
function Uninstall-KepochDriver {
    [CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
    param([switch] $KeepTool)
    Assert-KepochAdministrator
    if (-not $PSCmdlet.ShouldProcess("service '$script:ServiceName'", 'Uninstall kepoch driver')) { return }
    $service = Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue
    if ($service -and $service.Status -ne 'Stopped') {
        & sc.exe stop $script:ServiceName | Out-Null
        Wait-KepochServiceState -State 'Stopped' -TimeoutSeconds 30
    }
    # Driver-store packages whose original name is kepoch.inf (pnputil /enum-drivers prints one block
    # per package; the block holding both oemNN.inf and kepoch.inf is ours, whatever the UI language).
    $enum = (& pnputil.exe /enum-drivers 2>&1 | ForEach-Object { "$_" }) -join "`n"
    foreach ($block in ($enum -split "`n\s*`n")) {
        if ($block -match '(?i)\bkepoch\.inf\b' -and $block -match '(?i)\b(oem\d+\.inf)\b') {
            $published = $Matches[1]
            $out = & pnputil.exe /delete-driver $published /uninstall /force 2>&1
            if ($LASTEXITCODE -ne 0) { Write-Warning "kepoch: pnputil /delete-driver $published failed: $($out -join ' ')" }
        }
    }
    if (Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue) {
        $out = & sc.exe delete $script:ServiceName 2>&1
        if ($LASTEXITCODE -ne 0) { throw "kepoch: sc.exe delete failed ($LASTEXITCODE): $($out -join ' ')" }
    }
    $sys = Join-Path $env:SystemRoot 'System32\drivers\kepoch.sys'
    if (Test-Path -LiteralPath $sys) { Remove-Item -LiteralPath $sys -Force -ErrorAction SilentlyContinue }
    if (-not $KeepTool -and (Test-Path -LiteralPath $script:ToolDirectory)) {
        Remove-Item -LiteralPath $script:ToolDirectory -Recurse -Force
    }
    Remove-KepochAddedCertificate
}

<#
.SYNOPSIS
    Reads the kepoch registry parameters (missing values are reported as $null, meaning the default).
#>
function Get-KepochParameter {
    [CmdletBinding()]
    param()
    $values = @{ ActivationStrategy = $null; IdleDeactivation = $null; CyclePeriodMicroseconds = $null }
    if (Test-Path -LiteralPath $script:ParametersKey) {
        $item = Get-Item -LiteralPath $script:ParametersKey
        foreach ($name in @($values.Keys)) { $values[$name] = $item.GetValue($name, $null) }
    }
    $strategy = $null
    if ($null -ne $values.ActivationStrategy -and $values.ActivationStrategy -is [int] -and
        $values.ActivationStrategy -ge 0 -and $values.ActivationStrategy -le 2) {
        $strategy = $script:StrategyNames[$values.ActivationStrategy]
    }
    [pscustomobject]@{
        ActivationStrategy      = $values.ActivationStrategy
        StrategyName            = $strategy
        IdleDeactivation        = $values.IdleDeactivation
        CyclePeriodMicroseconds = $values.CyclePeriodMicroseconds
    }
}

<#
.SYNOPSIS
    Writes kepoch registry parameters (REG_DWORD). They take effect when the driver next loads.
.PARAMETER Strategy
    lazy (0), callback (1, the default) or eager (2).
.PARAMETER IdleDeactivation
    1 (default): idle CPUs leave the reclamation cycle; 0: every prepared CPU stays in every cycle.
.PARAMETER CyclePeriodMicroseconds
    Reclamation cycle period (default 1000; the driver clamps it to its documented range).
.PARAMETER Clear
    Remove all three values so that the driver uses its defaults.
.EXAMPLE
    Set-KepochParameter -Strategy lazy -IdleDeactivation 1 -WhatIf
#>
function Set-KepochParameter {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param(
        [string] $Strategy,
        [ValidateRange(0, 1)] [Nullable[int]] $IdleDeactivation,
        [ValidateRange(1, [int]::MaxValue)] [Nullable[int]] $CyclePeriodMicroseconds,
        [switch] $Clear
    )
    Assert-KepochAdministrator
    $changes = [ordered]@{}
    if ($Strategy) { $changes['ActivationStrategy'] = ConvertTo-KepochStrategyValue -Strategy $Strategy }
    if ($null -ne $IdleDeactivation) { $changes['IdleDeactivation'] = [int] $IdleDeactivation }
    if ($null -ne $CyclePeriodMicroseconds) { $changes['CyclePeriodMicroseconds'] = [int] $CyclePeriodMicroseconds }
    if ($Clear) {
        if ($PSCmdlet.ShouldProcess($script:ParametersKey, 'Remove kepoch parameters (use defaults)')) {
            foreach ($name in @('ActivationStrategy', 'IdleDeactivation', 'CyclePeriodMicroseconds')) {
                Remove-ItemProperty -LiteralPath $script:ParametersKey -Name $name -ErrorAction SilentlyContinue
            }
        }
    }
    if ($changes.Count -eq 0) {
        if (-not $Clear) { throw 'kepoch: nothing to set: give -Strategy, -IdleDeactivation, -CyclePeriodMicroseconds or -Clear.' }
        return
    }
    $summary = ($changes.Keys | ForEach-Object { "$_=$($changes[$_])" }) -join ', '
    if ($PSCmdlet.ShouldProcess($script:ParametersKey, "Set $summary")) {
        if (-not (Test-Path -LiteralPath $script:ParametersKey)) {
            New-Item -Path $script:ParametersKey -Force | Out-Null
        }
        foreach ($name in $changes.Keys) {
            New-ItemProperty -LiteralPath $script:ParametersKey -Name $name -PropertyType DWord -Value $changes[$name] -Force | Out-Null
        }
    }
}

<#
.SYNOPSIS
    Waits until the kepoch service reaches a state; throws on timeout.
.PARAMETER State
    Running or Stopped.
.PARAMETER TimeoutSeconds
    How long to wait.
#>
function Wait-KepochServiceState {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)] [ValidateSet('Running', 'Stopped')] [string] $State,
        [int] $TimeoutSeconds = 30
    )
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    while ((Get-Date) -lt $deadline) {
        $service = Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue
        if (-not $service) { throw "kepoch: service '$script:ServiceName' is not installed." }
        if ("$($service.Status)" -eq $State) { return }
        Start-Sleep -Milliseconds 250
    }
    throw "kepoch: service '$script:ServiceName' did not reach state $State within $TimeoutSeconds s."
}

<#
.SYNOPSIS
    Stops (if running) and starts the kepoch driver so that it re-reads its registry parameters.
.DESCRIPTION
    Uses sc.exe so that the Win32 error of a failed start is kept: the eager strategy refuses to load
    where the maximum processor count exceeds the active count and the start fails with error 87
    (ERROR_INVALID_PARAMETER), exactly like the original design. Returns an object with Started,
    ErrorCode and Message; with -ThrowOnFailure a failed start throws instead.
.PARAMETER ThrowOnFailure
    Throw when the driver does not start.
.EXAMPLE
    Restart-KepochDriver -ThrowOnFailure
#>
function Restart-KepochDriver {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param([switch] $ThrowOnFailure)
    Assert-KepochAdministrator
    if (-not (Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue)) {
        throw "kepoch: service '$script:ServiceName' is not installed (run Install-KepochDriver)."
    }
    if (-not $PSCmdlet.ShouldProcess("service '$script:ServiceName'", 'Restart driver')) { return }
    $service = Get-Service -Name $script:ServiceName
    if ("$($service.Status)" -ne 'Stopped') {
        $out = & sc.exe stop $script:ServiceName 2>&1
        if ($LASTEXITCODE -ne 0 -and $LASTEXITCODE -ne 1062) {
            throw "kepoch: sc.exe stop failed ($LASTEXITCODE): $($out -join ' ')"
        }
        Wait-KepochServiceState -State 'Stopped' -TimeoutSeconds 60
    }
    $out = & sc.exe start $script:ServiceName 2>&1
    $code = $LASTEXITCODE
    $message = (($out | ForEach-Object { "$_".Trim() }) | Where-Object { $_ }) -join ' '
    $started = $false
    if ($code -eq 0) {
        Wait-KepochServiceState -State 'Running' -TimeoutSeconds 30
        $started = $true
    }
    $result = [pscustomobject]@{ Started = $started; ErrorCode = $code; Message = $message }
    if (-not $started -and $ThrowOnFailure) {
        throw "kepoch: the driver did not start (error $code): $message"
    }
    return $result
}

<#
.SYNOPSIS
    Reports the processor topology seen by the guest and whether the OS supports processor hot-add.
.DESCRIPTION
    Maximum and active processor counts per group come from kernel32 GetMaximumProcessorCount /
    GetActiveProcessorCount (P/Invoke through Add-Type); ALL_PROCESSOR_GROUPS (0xFFFF) gives the totals.
    HotAddSupported is bit 0x20 (DbgDynProcessorEnabled) of KUSER_SHARED_DATA.SharedDataFlags at
    0x7FFE02F0: the kernel sets it only when dynamic partitioning is licensed (Server editions). Without
    it, a "hot-add" test measures nothing and must not be reported as one.
#>
function Get-KepochTopology {
    [CmdletBinding()]
    param()
    if (-not ('Kepoch.Native' -as [type])) {
        Add-Type -Namespace 'Kepoch' -Name 'Native' -MemberDefinition @'
[DllImport("kernel32.dll")] public static extern ushort GetActiveProcessorGroupCount();
[DllImport("kernel32.dll")] public static extern ushort GetMaximumProcessorGroupCount();
[DllImport("kernel32.dll")] public static extern uint GetActiveProcessorCount(ushort groupNumber);
[DllImport("kernel32.dll")] public static extern uint GetMaximumProcessorCount(ushort groupNumber);
'@
    }
    $native = 'Kepoch.Native' -as [type]
    $allGroups = [uint16] 0xFFFF
    $maxGroups = $native::GetMaximumProcessorGroupCount()
    $groups = @()
    for ($g = 0; $g -lt $maxGroups; $g++) {
        $groups += [pscustomobject]@{
            group  = $g
            max    = [int] $native::GetMaximumProcessorCount([uint16] $g)
            active = [int] $native::GetActiveProcessorCount([uint16] $g)
        }
    }
    $flags = [System.Runtime.InteropServices.Marshal]::ReadInt32([IntPtr] 0x7FFE02F0)
    $bcd = @{}
    try { $bcd = Get-KepochBootConfiguration } catch { Write-Verbose "bcdedit unavailable: $_" }
    $bcdValue = {
        param($name)
        if ($bcd.ContainsKey($name)) { return $bcd[$name] }
        return $null
    }
    [pscustomobject]@{
        max_processors       = [int] $native::GetMaximumProcessorCount($allGroups)
        active_processors    = [int] $native::GetActiveProcessorCount($allGroups)
        max_groups           = [int] $maxGroups
        active_groups        = [int] $native::GetActiveProcessorGroupCount()
        groups               = $groups
        shared_data_flags    = ('0x{0:X8}' -f $flags)
        hot_add_supported    = [bool] ($flags -band 0x20)
        bcd_maxproc          = & $bcdValue 'maxproc'
        bcd_groupsize        = & $bcdValue 'groupsize'
        bcd_numproc          = & $bcdValue 'numproc'
        bcd_testsigning      = & $bcdValue 'testsigning'
    }
}

<#
.SYNOPSIS
    Collects the guest's facts: OS build and edition, hypervisor, processor topology.
.DESCRIPTION
    The hypervisor is named from Win32_ComputerSystem (HypervisorPresent, Manufacturer, Model): Hyper-V
    reports "Microsoft Corporation"/"Virtual Machine", QEMU/KVM "QEMU" or "Standard PC (...)", VMware
    "VMware, Inc.".
#>
function Get-KepochGuestFact {
    [CmdletBinding()]
    param()
    $os = Get-CimInstance -ClassName Win32_OperatingSystem
    $cs = Get-CimInstance -ClassName Win32_ComputerSystem
    $ubr = $null
    try {
        $ubr = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion' -Name UBR -ErrorAction Stop).UBR
    } catch { Write-Verbose 'no UBR value' }
    $present = $false
    if ($cs.PSObject.Properties['HypervisorPresent']) { $present = [bool] $cs.HypervisorPresent }
    $identity = "$($cs.Manufacturer) $($cs.Model)"
    $hypervisor = 'unknown'
    if ($identity -match 'Microsoft Corporation Virtual Machine') { $hypervisor = 'Hyper-V' }
    elseif ($identity -match 'QEMU|KVM|Standard PC') { $hypervisor = 'QEMU/KVM' }
    elseif ($identity -match 'VMware') { $hypervisor = 'VMware' }
    elseif ($identity -match 'VirtualBox|innotek') { $hypervisor = 'VirtualBox' }
    elseif ($identity -match 'Xen') { $hypervisor = 'Xen' }
    elseif (-not $present) { $hypervisor = 'none (bare metal)' }
    $build = "$($os.BuildNumber)"
    if ($null -ne $ubr) { $build = "$build.$ubr" }
    [pscustomobject]@{
        computer_name      = $env:COMPUTERNAME
        os_caption         = "$($os.Caption)".Trim()
        os_version         = "$($os.Version)"
        os_build           = $build
        os_sku             = [int] $os.OperatingSystemSKU
        hypervisor         = $hypervisor
        hypervisor_present = $present
        manufacturer       = "$($cs.Manufacturer)"
        model              = "$($cs.Model)"
        topology           = Get-KepochTopology
        collected_at       = (Get-Date).ToUniversalTime().ToString('o')
        powershell         = "$($PSVersionTable.PSVersion)"
    }
}

<#
.SYNOPSIS
    Resets the driver's counters (kepochctl reset).
#>
function Reset-KepochStats {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param()
    if ($PSCmdlet.ShouldProcess('kepoch counters', 'Reset')) { Invoke-KepochCtl -ArgumentList @('reset') | Out-Null }
}

<#
.SYNOPSIS
    Starts the driver's built-in load generator (kepochctl load start --rate N --seconds S).
.PARAMETER Rate
    Operations per second requested from the load generator.
.PARAMETER Seconds
    How long the load runs.
#>
function Start-KepochLoad {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param(
        [ValidateRange(1, [int]::MaxValue)] [int] $Rate = 100000,
        [ValidateRange(1, 86400)] [int] $Seconds = 30
    )
    if ($PSCmdlet.ShouldProcess('kepoch load generator', "Start ($Rate/s for $Seconds s)")) {
        Invoke-KepochCtl -ArgumentList @('load', 'start', '--rate', "$Rate", '--seconds', "$Seconds") | Out-Null
    }
}

<#
.SYNOPSIS
    Stops the driver's built-in load generator (kepochctl load stop).
#>
function Stop-KepochLoad {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param()
    if ($PSCmdlet.ShouldProcess('kepoch load generator', 'Stop')) { Invoke-KepochCtl -ArgumentList @('load', 'stop') | Out-Null }
}

<#
.SYNOPSIS
    Returns the driver's statistics (kepochctl stats --json) as an object in the kepoch-report schema.
#>
function Get-KepochStats {
    [CmdletBinding()]
    param()
    $json = Invoke-KepochCtl -ArgumentList @('stats', '--json')
    try { return ($json | ConvertFrom-Json) }
    catch { throw "kepoch: 'kepochctl stats --json' did not print valid JSON: $_`n$json" }
}

<#
.SYNOPSIS
    Builds one report document: the driver's stats merged with the guest's facts.
.DESCRIPTION
    When the driver is loaded, the document is `kepochctl stats --json` with "source": "guest" on every
    result and the guest facts under scenario.guest and results[].guest. When it did not load (for
    example eager where max > active), a result with loaded = false and load_error is synthesised.
    A hot-add result is claimed (scenario.hot_add_claimed) only when the guest reports hot-add support
    and its active processor count grew during the round.
.PARAMETER Strategy
    The strategy the round asked for.
.PARAMETER Round
    Round number (1-based).
.PARAMETER LoadError
    The start error, when the driver did not start.
.PARAMETER ActiveBefore
    Active processor count when the round started (for the hot-add claim).
.PARAMETER HotAddRequested
    Number of processors the host tried to hot-add during the round (0: none).
.PARAMETER Scenario
    Extra scenario fields (name, description, hypervisor plan, ...).
#>
function Get-KepochResult {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)] [string] $Strategy,
        [int] $Round = 1,
        [string] $LoadError,
        [int] $ActiveBefore = -1,
        [int] $HotAddRequested = 0,
        [hashtable] $Scenario = @{}
    )
    $facts = Get-KepochGuestFact
    $name = $script:StrategyNames[(ConvertTo-KepochStrategyValue -Strategy $Strategy)]
    $activeAfter = $facts.topology.active_processors
    if ($ActiveBefore -lt 0) { $ActiveBefore = $activeAfter }
    $hotAddClaimed = ($HotAddRequested -gt 0) -and $facts.topology.hot_add_supported -and ($activeAfter -gt $ActiveBefore)
    $doc = $null
    if (-not $LoadError) {
        try { $doc = Get-KepochStats } catch { $LoadError = "$_" }
    }
    if ($null -eq $doc) {
        $doc = [pscustomobject]@{
            scenario = [pscustomobject]@{}
            results  = @([pscustomobject]@{ strategy = $name; loaded = $false; load_error = $LoadError })
        }
    }
    if (-not $doc.PSObject.Properties['scenario'] -or $null -eq $doc.scenario) {
        $doc | Add-Member -NotePropertyName scenario -NotePropertyValue ([pscustomobject]@{}) -Force
    }
    $extra = [ordered]@{
        name               = "guest-$($facts.hypervisor)-$name".ToLowerInvariant() -replace '[^a-z0-9]+', '-'
        description        = "Real guest ($($facts.hypervisor), $($facts.os_caption) build $($facts.os_build)), round $Round"
        source             = 'guest'
        round              = $Round
        strategy_requested = $name
        max_reported       = $facts.topology.max_processors
        active_at_boot     = $ActiveBefore
        active_at_end      = $activeAfter
        hot_add_requested  = $HotAddRequested
        hot_add_supported  = $facts.topology.hot_add_supported
        hot_add_claimed    = [bool] $hotAddClaimed
        guest              = $facts
    }
    foreach ($key in $Scenario.Keys) { $extra[$key] = $Scenario[$key] }
    foreach ($key in $extra.Keys) {
        $doc.scenario | Add-Member -NotePropertyName $key -NotePropertyValue $extra[$key] -Force
    }
    foreach ($result in @($doc.results)) {
        $result | Add-Member -NotePropertyName source -NotePropertyValue 'guest' -Force
        $result | Add-Member -NotePropertyName round -NotePropertyValue $Round -Force
        $result | Add-Member -NotePropertyName guest -NotePropertyValue $facts -Force
    }
    return $doc
}

<#
.SYNOPSIS
    Writes a report document (Get-KepochResult) as UTF-8 JSON without a byte-order mark.
.PARAMETER InputObject
    The document.
.PARAMETER Path
    The JSON file to write.
#>
function Export-KepochResult {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param(
        [Parameter(Mandatory = $true, ValueFromPipeline = $true)] $InputObject,
        [Parameter(Mandatory = $true)] [string] $Path
    )
    process {
        if ($PSCmdlet.ShouldProcess($Path, 'Write kepoch result JSON')) {
            $json = $InputObject | ConvertTo-Json -Depth 20
            $full = [System.IO.Path]::GetFullPath($Path)
            [System.IO.File]::WriteAllText($full, $json, (New-Object System.Text.UTF8Encoding($false)))
            Get-Item -LiteralPath $full
        }
    }
}

<#
.SYNOPSIS
    Prepares and starts one A/B round: sets the strategy, restarts the driver, resets counters, starts load.
.DESCRIPTION
    Returns a round object to pass to Complete-KepochRound. Hosts that hot-add processors (QEMU, VMware)
    call this, add processors while the load runs, then call Complete-KepochRound.
.PARAMETER Strategy
    lazy, callback or eager.
.PARAMETER Round
    Round number (1-based).
.PARAMETER IdleDeactivation
    Registry IdleDeactivation for this round (default 1).
.PARAMETER LoadRate
    Load generator rate (operations per second).
.PARAMETER LoadSeconds
    Load duration.
#>
function Start-KepochRound {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param(
        [Parameter(Mandatory = $true)] [string] $Strategy,
        [int] $Round = 1,
        [ValidateRange(0, 1)] [int] $IdleDeactivation = 1,
        [int] $LoadRate = 100000,
        [int] $LoadSeconds = 30
    )
    $name = $script:StrategyNames[(ConvertTo-KepochStrategyValue -Strategy $Strategy)]
    $round = [pscustomobject]@{
        strategy      = $name
        round         = $Round
        load_error    = $null
        active_before = (Get-KepochTopology).active_processors
        load_seconds  = $LoadSeconds
        started_at    = (Get-Date).ToUniversalTime().ToString('o')
    }
    if (-not $PSCmdlet.ShouldProcess("kepoch round $Round", "Run strategy $name")) { return $round }
    Set-KepochParameter -Strategy $name -IdleDeactivation $IdleDeactivation -Confirm:$false
    $start = Restart-KepochDriver -Confirm:$false
    if (-not $start.Started) {
        $round.load_error = "driver start failed with Win32 error $($start.ErrorCode): $($start.Message)"
        Write-Warning "kepoch: round ${Round} (${name}): $($round.load_error)"
        return $round
    }
    Reset-KepochStats -Confirm:$false
    Start-KepochLoad -Rate $LoadRate -Seconds $LoadSeconds -Confirm:$false
    return $round
}

<#
.SYNOPSIS
    Finishes a round started with Start-KepochRound: stops load, synchronizes, writes the JSON file.
.PARAMETER RoundInfo
    The object returned by Start-KepochRound.
.PARAMETER OutputPath
    Folder for the JSON file (round-NN-STRATEGY.json).
.PARAMETER HotAddRequested
    Processors the host tried to hot-add during the round.
.PARAMETER Scenario
    Extra scenario fields recorded in the file.
#>
function Complete-KepochRound {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param(
        [Parameter(Mandatory = $true)] $RoundInfo,
        [Parameter(Mandatory = $true)] [string] $OutputPath,
        [int] $HotAddRequested = 0,
        [hashtable] $Scenario = @{}
    )
    if (-not (Test-Path -LiteralPath $OutputPath)) { New-Item -ItemType Directory -Path $OutputPath -Force | Out-Null }
    if (-not $RoundInfo.load_error) {
        try {
            Stop-KepochLoad -Confirm:$false
            Invoke-KepochCtl -ArgumentList @('sync') | Out-Null
        } catch { Write-Warning "kepoch: stopping load failed: $_" }
    }
    $doc = Get-KepochResult -Strategy $RoundInfo.strategy -Round $RoundInfo.round -LoadError $RoundInfo.load_error `
        -ActiveBefore $RoundInfo.active_before -HotAddRequested $HotAddRequested -Scenario $Scenario
    $file = Join-Path $OutputPath ('round-{0:D2}-{1}.json' -f $RoundInfo.round, $RoundInfo.strategy)
    Export-KepochResult -InputObject $doc -Path $file -Confirm:$false
}

<#
.SYNOPSIS
    Runs an A/B series: N rounds alternating strategies, restarting the driver between rounds, one JSON
    file per round in OutputPath.
.DESCRIPTION
    Round i uses Strategies[(i - 1) mod count]. Each round writes the registry, restarts the driver, resets
    the counters, runs the load generator for LoadSeconds, stops it, runs `kepochctl sync` and writes
    round-NN-STRATEGY.json. A strategy that fails to load (eager where max > active) still gets a file
    with loaded = false and the error. Merge the files with `kepoch-sim report results/*.json`.
.PARAMETER Rounds
    Number of rounds (default 6: two of each strategy).
.PARAMETER OutputPath
    Folder for the JSON files (created if missing).
.PARAMETER Strategies
    Strategies to alternate (default lazy, callback, eager).
.PARAMETER IdleDeactivation
    Registry IdleDeactivation for every round (default 1).
.PARAMETER LoadRate
    Load generator rate (operations per second).
.PARAMETER LoadSeconds
    Load duration per round.
.PARAMETER Scenario
    Extra scenario fields recorded in every file.
.EXAMPLE
    Invoke-KepochAB -Rounds 6 -OutputPath C:\kepoch\results -LoadSeconds 60
#>
function Invoke-KepochAB {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param(
        [ValidateRange(1, 1000)] [int] $Rounds = 6,
        [Parameter(Mandatory = $true)] [string] $OutputPath,
        [string[]] $Strategies = @('lazy', 'callback', 'eager'),
        [ValidateRange(0, 1)] [int] $IdleDeactivation = 1,
        [int] $LoadRate = 100000,
        [ValidateRange(1, 86400)] [int] $LoadSeconds = 30,
        [hashtable] $Scenario = @{}
    )
    Assert-KepochAdministrator
    foreach ($s in $Strategies) { $null = ConvertTo-KepochStrategyValue -Strategy $s }
    if (-not $PSCmdlet.ShouldProcess("$Rounds round(s) of $($Strategies -join '/')", 'Run kepoch A/B series')) { return }
    $files = @()
    for ($i = 1; $i -le $Rounds; $i++) {
        $strategy = $Strategies[($i - 1) % $Strategies.Count]
        Write-Progress -Activity 'kepoch A/B' -Status "round $i of ${Rounds}: $strategy" -PercentComplete (100 * ($i - 1) / $Rounds)
        $info = Start-KepochRound -Strategy $strategy -Round $i -IdleDeactivation $IdleDeactivation `
            -LoadRate $LoadRate -LoadSeconds $LoadSeconds -Confirm:$false
        if (-not $info.load_error) { Start-Sleep -Seconds ($LoadSeconds + 1) }
        $file = Complete-KepochRound -RoundInfo $info -OutputPath $OutputPath -Scenario $Scenario -Confirm:$false
        Write-Verbose "kepoch: round $i ($strategy) -> $($file.FullName)"
        $files += $file
    }
    Write-Progress -Activity 'kepoch A/B' -Completed
    return $files
}

Export-ModuleMember -Function @(
    'Get-KepochTestSigning', 'Get-KepochBootConfiguration', 'Install-KepochDriver', 'Uninstall-KepochDriver',
    'Get-KepochParameter', 'Set-KepochParameter', 'Restart-KepochDriver', 'Get-KepochTopology',
    'Get-KepochGuestFact', 'Reset-KepochStats', 'Start-KepochLoad', 'Stop-KepochLoad', 'Get-KepochStats',
    'Get-KepochResult', 'Export-KepochResult', 'Start-KepochRound', 'Complete-KepochRound', 'Invoke-KepochAB'
)
